//! Test data: bytes that make a wrong echo visible.
//!
//! Bytes come from a seeded xorshift generator mapped onto 64 printable characters:
//! a shifted, stale or swapped echo differs from what was sent (a constant fill would
//! hide those), mismatches print readably, and no payload starts with the NUL byte
//! that begins the identity probe.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `len` pseudo-random printable bytes; the same seed always gives the same bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64* needs a non-zero state.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ALPHABET[(r >> 58) as usize]
        })
        .collect()
}

/// Index of the first byte where `got` differs from `want`, if any.
pub fn first_difference(want: &[u8], got: &[u8]) -> Option<usize> {
    if want == got {
        return None;
    }
    Some(
        want.iter()
            .zip(got)
            .position(|(a, b)| a != b)
            .unwrap_or(want.len().min(got.len())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_printable_and_varied() {
        let a = pattern(1000, 7);
        assert_eq!(a, pattern(1000, 7));
        assert_ne!(a, pattern(1000, 8));
        assert!(a.iter().all(|b| b.is_ascii_graphic()));
        // A one-byte shift must not line up with itself.
        assert_ne!(&a[1..], &a[..999]);
    }

    #[test]
    fn first_difference_finds_the_byte() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"ab"), Some(2));
    }
}
