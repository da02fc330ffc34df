//! Element types of artifact tensors: the table between safetensors, candle and Rust types.

use candle_core::DType;
use half::{bf16, f16};
use safetensors::Dtype;

/// Element types an artifact tensor may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit float.
    F64,
    /// 64-bit signed integer.
    I64,
    /// 32-bit signed integer.
    I32,
    /// 32-bit unsigned integer.
    U32,
    /// Byte.
    U8,
}

impl ElemType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F16 | ElemType::BF16 => 2,
            ElemType::U8 => 1,
        }
    }

    /// The safetensors dtype string.
    pub fn as_str(self) -> &'static str {
        match self {
            ElemType::F32 => "F32",
            ElemType::F16 => "F16",
            ElemType::BF16 => "BF16",
            ElemType::F64 => "F64",
            ElemType::I64 => "I64",
            ElemType::I32 => "I32",
            ElemType::U32 => "U32",
            ElemType::U8 => "U8",
        }
    }

    /// The element type of a safetensors dtype, `None` for the dtypes artifacts do not use
    /// (booleans, 8-bit and sub-byte floats, 8- and 16-bit integers, ...).
    pub fn from_safetensors(d: Dtype) -> Option<Self> {
        Some(match d {
            Dtype::F32 => ElemType::F32,
            Dtype::F16 => ElemType::F16,
            Dtype::BF16 => ElemType::BF16,
            Dtype::F64 => ElemType::F64,
            Dtype::I64 => ElemType::I64,
            Dtype::I32 => ElemType::I32,
            Dtype::U32 => ElemType::U32,
            Dtype::U8 => ElemType::U8,
            _ => return None,
        })
    }

    /// The element type of a candle dtype, `None` for those the writer does not store.
    pub fn from_candle(d: DType) -> Option<Self> {
        Some(match d {
            DType::F32 => ElemType::F32,
            DType::F16 => ElemType::F16,
            DType::BF16 => ElemType::BF16,
            DType::F64 => ElemType::F64,
            DType::I64 => ElemType::I64,
            DType::U32 => ElemType::U32,
            DType::U8 => ElemType::U8,
            _ => return None,
        })
    }
}

mod sealed {
    /// Keeps [`super::Element`] implemented by this crate's list of types only.
    pub trait Sealed {}
}

/// A Rust type stored as an artifact tensor element: plain old data (any bit pattern valid, no
/// padding) with a fixed [`ElemType`]. Sealed: implemented for `f32`, `f16`, `bf16`, `f64`,
/// `u8`, `u32`, `i32` and `i64` only.
pub trait Element: bytemuck::Pod + sealed::Sealed {
    /// The element type written to the header.
    const ELEM: ElemType;
}

macro_rules! element {
    ($($t:ty => $e:ident),* $(,)?) => {
        $(
            impl sealed::Sealed for $t {}
            impl Element for $t {
                const ELEM: ElemType = ElemType::$e;
            }
        )*
    };
}

element!(f32 => F32, f16 => F16, bf16 => BF16, f64 => F64, u8 => U8, u32 => U32, i32 => I32, i64 => I64);

#[cfg(not(target_endian = "little"))]
compile_error!("lt-core writes safetensors (little-endian) by reinterpreting memory");

/// The bytes of `data` in memory order, which is safetensors' little-endian order on the
/// (little-endian, checked at compile time) targets this crate builds for.
pub fn bytes_of<T: Element>(data: &[T]) -> &[u8] {
    bytemuck::cast_slice(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_sizes_match_their_types_and_safetensors() {
        fn check<T: Element>() {
            assert_eq!(std::mem::size_of::<T>(), T::ELEM.size(), "{:?}", T::ELEM);
        }
        check::<f32>();
        check::<f16>();
        check::<bf16>();
        check::<f64>();
        check::<u8>();
        check::<u32>();
        check::<i32>();
        check::<i64>();
        for e in [
            ElemType::F32,
            ElemType::F16,
            ElemType::BF16,
            ElemType::F64,
            ElemType::I64,
            ElemType::I32,
            ElemType::U32,
            ElemType::U8,
        ] {
            // The safetensors dtype of the same name maps back to `e`, with the same width.
            let d: Dtype = serde_json::from_value(serde_json::json!(e.as_str())).unwrap();
            assert_eq!(ElemType::from_safetensors(d), Some(e));
            assert_eq!(d.bitsize(), 8 * e.size());
        }
        assert_eq!(ElemType::from_safetensors(Dtype::BOOL), None);
        assert_eq!(ElemType::from_safetensors(Dtype::I16), None);
    }

    #[test]
    fn bytes_are_little_endian() {
        assert_eq!(bytes_of(&[1.0f32]), 1.0f32.to_le_bytes());
        assert_eq!(bytes_of(&[0x0102_0304u32, 5]), [4, 3, 2, 1, 5, 0, 0, 0]);
        assert_eq!(bytes_of(&[-2i64]), (-2i64).to_le_bytes());
    }
}
