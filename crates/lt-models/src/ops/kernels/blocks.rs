//! The blocks each strip kernel runs, listed once: every list is a macro that hands its blocks to
//! another macro (`$then!`), which builds either the table the passes read ([`super::STRIP_SHAPES`],
//! [`super::AVX2_STRIP_SHAPES`], [`super::GRAD_STRIP_SHAPES`]) or a SIMD set's dispatch from a
//! run-time block to the kernel compiled for it (`simd`). A block's row counts are written out,
//! `1 2 .. most`, because each is a compile-time constant of the kernel; the table keeps the
//! most. The agreement check ([`super::check::agrees_with_portable`]) runs every row count of
//! every listed block, so a list with a gap fails it.

/// The AVX-512 (and portable) strip blocks, `(window, nb, depth; rows)`: see
/// [`super::STRIP_SHAPES`].
macro_rules! avx512_strip_blocks {
    ($then:ident) => {
        $then! {
            (Three, 2, 16; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
            (Three, 4, 32; 1 2 3 4 5 6 7 8 9 10),
            (Three, 4, 64; 1 2 3 4 5 6 7 8 9 10),
            (Three, 4, 128; 1 2 3 4 5 6 7 8 9 10),
            (Three, 4, 256; 1 2 3 4 5 6 7 8 9 10),
            (Three, 4, 512; 1 2 3 4 5 6 7 8 9 10),
            (Pair, 2, 32; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
            (Pair, 4, 64; 1 2 3 4 5 6 7 8 9 10 11 12),
            (Pair, 4, 128; 1 2 3 4 5 6 7 8 9 10 11 12),
            (Pair, 4, 256; 1 2 3 4 5 6 7 8 9 10 11 12),
            (Pair, 4, 512; 1 2 3 4 5 6 7 8 9 10 11 12),
            (Single, 2, 32; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
            (Single, 4, 64; 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            (Single, 4, 128; 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            (Single, 4, 256; 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
            (Single, 4, 512; 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
        }
    };
}

/// The AVX2 strip blocks, `(window, nb, depth; rows)`: see [`super::AVX2_STRIP_SHAPES`].
macro_rules! avx2_strip_blocks {
    ($then:ident) => {
        $then! {
            (Three, 2, 16; 1 2 3 4),
            (Pair, 2, 32; 1 2 3 4 5),
            (Pair, 2, 64; 1 2 3 4 5),
            (Pair, 2, 128; 1 2 3 4 5),
            (Pair, 2, 256; 1 2 3 4 5),
            (Pair, 2, 512; 1 2 3 4 5),
            (Single, 2, 32; 1 2 3 4 5 6),
            (Single, 2, 64; 1 2 3 4 5 6),
            (Single, 2, 128; 1 2 3 4 5 6),
            (Single, 2, 256; 1 2 3 4 5 6),
            (Single, 2, 512; 1 2 3 4 5 6),
        }
    };
}

/// The AVX-512 (and portable) weight-gradient strip blocks, `(nb; input channels)`: see
/// [`super::GRAD_STRIP_SHAPES`].
macro_rules! grad_strip_blocks {
    ($then:ident) => {
        $then! {
            (2; 1 2 3 4 5 6),
            (4; 1 2 3 4),
        }
    };
}

/// A strip-block list as the table of [`super::StripKernel::shapes`]: `(window, nb, depth, most
/// rows)`.
macro_rules! strip_table {
    ($(($w:ident, $nb:literal, $c:literal; $($n:literal)+)),+ $(,)?) => {
        &[$((Window::$w, $nb, $c, [$($n),+].len())),+]
    };
}

/// A weight-gradient block list as the table of [`super::GradStripKernel::shapes`]: `(nb, most
/// input channels)`.
macro_rules! grad_strip_table {
    ($(($nb:literal; $($n:literal)+)),+ $(,)?) => {
        &[$(($nb, [$($n),+].len())),+]
    };
}
