//! Little-endian integer wrappers for on-disk structs.
//!
//! On-disk structs hold these instead of native integers so that the byte
//! order is explicit and the struct stays `Pod` on any host.

use bytemuck::{Pod, Zeroable};

macro_rules! le_int {
    ($name:ident, $native:ty, $bytes:expr) => {
        #[doc = concat!("A little-endian `", stringify!($native), "` as stored on disk.")]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
        #[repr(transparent)]
        pub struct $name([u8; $bytes]);

        impl $name {
            pub const fn new(v: $native) -> Self {
                Self(v.to_le_bytes())
            }

            pub const fn get(self) -> $native {
                <$native>::from_le_bytes(self.0)
            }

            pub fn set(&mut self, v: $native) {
                self.0 = v.to_le_bytes();
            }
        }

        impl From<$native> for $name {
            fn from(v: $native) -> Self {
                Self::new(v)
            }
        }

        impl From<$name> for $native {
            fn from(v: $name) -> $native {
                v.get()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.get(), f)
            }
        }
    };
}

le_int!(Le16, u16, 2);
le_int!(Le32, u32, 4);
le_int!(Le64, u64, 8);
le_int!(LeI64, i64, 8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_round_trips_and_is_little_endian() {
        let v = Le64::new(0x0102_0304_0506_0708);
        assert_eq!(bytemuck::bytes_of(&v), &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(v.get(), 0x0102_0304_0506_0708);
        let mut w = Le32::default();
        w.set(0xdead_beef);
        assert_eq!(u32::from(w), 0xdead_beef);
        assert_eq!(Le16::from(7u16).get(), 7);
    }
}
