//! The multiplicative hash of 32-bit words that the datapath's own tables use to place keys
//! (`FLOWS`, see [`crate::conntrack`]; the VIP index, see [`crate::vip_index`]): a few
//! instructions per word, no table, no helper call.

/// The multiplier of each round: the 64-bit golden ratio (odd, so every round is a bijection).
const GOLDEN_RATIO: u64 = 0x9e37_79b9_7f4a_7c15;

/// One round: `word` mixed into the state `h`. The product's high bits are the well-mixed ones.
#[inline(always)]
pub(crate) const fn round(h: u64, word: u32) -> u64 {
    (h ^ word as u64).wrapping_mul(GOLDEN_RATIO)
}

/// A final mix of `h`, so its low bits depend on every word too.
#[inline(always)]
pub(crate) const fn finish(h: u64) -> u64 {
    (h ^ (h >> 32)).wrapping_mul(GOLDEN_RATIO)
}
