//! End-to-end tests of the SRepr pipeline live in `tests/`; the library is empty.
