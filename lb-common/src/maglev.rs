//! Maglev consistent hashing: builds the ring of backend ids that the datapath indexes with
//! `flow_hash % ring size`.
//!
//! The algorithm is the one of the Maglev paper (Eisenbud et al., NSDI 2016): every backend
//! derives a pseudo-random permutation of the ring's slots from its identity, and backends take
//! turns claiming their next preferred slot that is still free. This gives
//!
//! - **balance**: with equal weights every backend owns `⌊M/N⌋` or `⌈M/N⌉` of the `M` slots;
//! - **minimal disruption**: removing or adding one of `N` backends moves little more than the
//!   `1/N` of the slots that must move, so few flows without a conntrack entry change backend;
//! - **determinism**: the ring depends only on the backends' identities, weights and ids, never
//!   on the input order, the machine or the Rust version, so `lb explain` and every agent in a
//!   cluster compute the same ring as the one loaded into the kernel.
//!
//! Weights are relative. Each round every backend earns its weight in credit and claims one slot
//! per `max_weight` of credit, so the heaviest backend claims exactly one slot per round and a
//! backend of weight `w` claims `w / max_weight` slots per round on average.

use std::fmt;

use crate::maps::NO_BACKEND;

/// One backend as the ring builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Value written into the ring slots this backend owns (its index in the `BACKENDS` map).
    pub id: u32,
    /// Stable bytes naming the backend (e.g. its address and port). The backend's slot
    /// preferences derive from these bytes alone, so they must not depend on `id`, which may be
    /// reassigned when the configuration is reloaded.
    pub identity: &'a [u8],
    /// Relative weight; 0 means the backend gets no slot (draining or disabled).
    pub weight: u32,
}

/// Why a ring could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The ring size is not a prime, so the backends' slot permutations would not cover the ring.
    SizeNotPrime {
        /// The rejected ring size.
        size: u32,
    },
    /// The ring has fewer slots than there are backends with a weight above 0.
    SizeTooSmall {
        /// The rejected ring size.
        size: u32,
        /// Number of backends with a weight above 0.
        weighted_backends: usize,
    },
    /// Two backends (weight-0 ones included) have the same identity, so they would have the
    /// same slot preferences.
    DuplicateIdentity {
        /// The repeated identity.
        identity: Vec<u8>,
    },
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SizeNotPrime { size } => write!(f, "Maglev ring size {size} is not a prime"),
            Self::SizeTooSmall {
                size,
                weighted_backends,
            } => write!(
                f,
                "Maglev ring size {size} is smaller than the number of weighted backends \
                 ({weighted_backends})"
            ),
            Self::DuplicateIdentity { identity } => {
                write!(f, "duplicate backend identity 0x")?;
                identity.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }
    }
}

impl std::error::Error for MaglevError {}

/// Builds a ring of `size` slots (size must be prime; return an error otherwise) whose entries
/// are backend `id`s.
///
/// Every slot holds the id of a backend whose weight is above 0; if there is none, every slot
/// holds [`NO_BACKEND`]. With `W` the total weight, a backend of weight `w` owns `M·w/W` slots
/// give or take a few (exactly `⌊M/N⌋` or `⌈M/N⌉` with equal weights), so a backend whose share
/// is under 2 slots (a tiny weight in a small ring) may own none. The ring depends only on the
/// set of (identity, weight, id) triples, not on the order of `backends`.
///
/// Cost, for `M = size`: about `M·ln(√M)` bitmap probes (half of the plain algorithm's
/// `M·ln M`: the last `√M` claims scan a list of the free slots instead, about `M / 2` cheap
/// steps in all), plus, when weights differ, the credit updates of one period of rounds
/// (see `Turns` below), or of every round when a period would not fit in the ring. About 0.8 ms
/// for 1000 backends and M = 65537, 9.5 ms for M = 655373, weighted or not
/// (`cargo bench -p lb-common --bench maglev`, 2-core VM).
pub fn build_ring(backends: &[MaglevBackend<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::SizeNotPrime { size });
    }
    let sorted = sorted_by_identity(backends)?;
    let weighted: Vec<&MaglevBackend<'_>> = sorted
        .into_iter()
        .filter(|backend| backend.weight > 0)
        .collect();
    if weighted.is_empty() {
        return Ok(vec![NO_BACKEND; size as usize]);
    }
    if (size as usize) < weighted.len() {
        return Err(MaglevError::SizeTooSmall {
            size,
            weighted_backends: weighted.len(),
        });
    }
    Ok(fill_ring(&weighted, size))
}

/// Whether `n` is a prime, by trial division (at most ~22 000 divisions for any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Every prime above 3 is 6k ± 1, so only those candidates need testing as divisors.
    let n = u64::from(n);
    let mut divisor: u64 = 5;
    while divisor * divisor <= n {
        if n.is_multiple_of(divisor) || n.is_multiple_of(divisor + 2) {
            return false;
        }
        divisor += 6;
    }
    true
}

/// The backends sorted by identity bytes, which makes the claiming order (and so the ring)
/// independent of the input order. Rejects duplicate identities, which sort next to each other.
fn sorted_by_identity<'b, 'a>(
    backends: &'b [MaglevBackend<'a>],
) -> Result<Vec<&'b MaglevBackend<'a>>, MaglevError> {
    let mut sorted: Vec<&MaglevBackend<'a>> = backends.iter().collect();
    sorted.sort_unstable_by(|left, right| left.identity.cmp(right.identity));
    match sorted
        .windows(2)
        .find(|pair| pair[0].identity == pair[1].identity)
    {
        Some(pair) => Err(MaglevError::DuplicateIdentity {
            identity: pair[0].identity.to_vec(),
        }),
        None => Ok(sorted),
    }
}

/// Runs the Maglev claiming rounds over `backends` (sorted, all with weight > 0, at most `size`
/// of them) until every slot of the ring is owned: `size` claims, each by the backend whose
/// turn it is, of the first free slot in its permutation.
///
/// Two phases give the same claims as walking permutations until the end, only faster:
/// probing while many slots are free (in blocks of slots while a claim's number of probes is
/// hard to predict, see [`ProbeMode`]), then scanning the list of free slots (see
/// [`FreeList`]) once fewer than [`scan_threshold`] are left. Most claims happen in whole
/// rounds far from the switch, so those take a lean loop without per-claim bookkeeping.
fn fill_ring(backends: &[&MaglevBackend<'_>], size: u32) -> Vec<u32> {
    let mut cursors: Vec<Cursor> = backends
        .iter()
        .map(|backend| Cursor::new(backend, size))
        .collect();
    let mut turns = Turns::new(backends, size);
    let mut ring = vec![NO_BACKEND; size as usize];
    let mut taken = SlotSet::new(size);
    let scan_below = scan_threshold(size);
    let mut free = size as usize;
    let mut list: Option<FreeList> = None;
    while free > 0 {
        let round = turns.next_round();
        if free >= round.len() + scan_below {
            let (cursors, taken, ring) = (&mut cursors, &mut taken, &mut ring);
            match ProbeMode::for_free_share(free, size) {
                ProbeMode::Loop => {
                    claim_round(round, cursors, taken, ring, Cursor::claim_by_probing)
                }
                ProbeMode::Blocks4 => {
                    claim_round(round, cursors, taken, ring, Cursor::claim_by_blocks::<4>);
                }
                ProbeMode::Blocks8 => {
                    claim_round(round, cursors, taken, ring, Cursor::claim_by_blocks::<8>);
                }
                ProbeMode::Pairs => {
                    claim_round(round, cursors, taken, ring, Cursor::claim_by_probing_pairs);
                }
            }
            free -= round.len();
            continue;
        }
        // The round that crosses the threshold, and every round after it.
        for &backend in round.iter().take(free) {
            let cursor = &mut cursors[backend as usize];
            let slot = if free > scan_below {
                cursor.claim_by_probing(&mut taken, size)
            } else {
                list.get_or_insert_with(|| FreeList::new(&taken, size))
                    .claim(cursor, size)
            };
            ring[slot as usize] = cursor.id;
            free -= 1;
        }
    }
    ring
}

/// One round of claims, each made by `claim` (a way of probing, see [`ProbeMode`]), in a
/// function of its own so that the hot loop gets the registers to itself instead of sharing
/// them with the rest of [`fill_ring`]: one copy of it per `claim`, with `claim` inlined.
#[inline(never)]
fn claim_round(
    round: &[u32],
    cursors: &mut [Cursor],
    taken: &mut SlotSet,
    ring: &mut [u32],
    claim: impl Fn(&mut Cursor, &mut SlotSet, u32) -> u32,
) {
    // One entry per slot, and the size came from a u32.
    let size = ring.len() as u32;
    for &backend in round {
        let cursor = &mut cursors[backend as usize];
        let slot = claim(cursor, taken, size);
        ring[slot as usize] = cursor.id;
    }
}

/// How a round claims its slots by probing, by the share of the ring still free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeMode {
    /// [`Cursor::claim_by_probing`]: one slot, one branch at a time.
    Loop,
    /// [`Cursor::claim_by_blocks`] 4 slots at a time.
    Blocks4,
    /// [`Cursor::claim_by_blocks`] 8 slots at a time.
    Blocks8,
    /// [`Cursor::claim_by_probing_pairs`]: two slots per loop iteration.
    Pairs,
}

impl ProbeMode {
    /// A claim probes `M / free` slots on average. Above 2/3 free, the first probe succeeds
    /// often enough for the branch predictor to bet on it; between 2/3 and 1/5 free, the probe
    /// loop's exit is a coin flip (about one misprediction per claim), and testing a fixed
    /// block of 4 or 8 slots without branching is faster (measured: 1000 backends, M = 65537
    /// and 655373; blocks from 1/2 or 1/3 free on, or of 16 slots, are slower); below 1/5
    /// free, blocks would waste too many probes and the loop predicts well again, but walks
    /// long enough for the latency of its steps to dominate, so it walks two chains at once
    /// (four chains: faster for M = 65537, slower for 655373).
    fn for_free_share(free: usize, size: u32) -> Self {
        let (free, size) = (free as u64, u64::from(size));
        if 3 * free > 2 * size {
            Self::Loop
        } else if 5 * free > 2 * size {
            Self::Blocks4
        } else if 5 * free > size {
            Self::Blocks8
        } else {
            Self::Pairs
        }
    }
}

/// Number of free slots below which [`fill_ring`] stops probing and scans the [`FreeList`].
///
/// A claim by probing walks about `M / free` slots of its permutation (each a load and a
/// branch, plus one mispredicted branch at the end), a claim by scanning computes `free` slot
/// distances (a few multiplications each, no unpredictable branch): they cost about the same
/// near `√M` (measured: `√M / 2` and `2·√M` are both slower). That is 256 for M = 65537,
/// where the last 256 claims would otherwise take more than 40% of all probes.
fn scan_threshold(size: u32) -> usize {
    // `isqrt` of a u32 fits in a u16.
    usize::from(size.isqrt() as u16)
}

/// Who claims slots in which order: the backends in identity order, round after round, a
/// backend taking its turn in a round whenever its weight credit allows.
///
/// Weights are relative: each round every backend earns its weight in credit and spends
/// `max_weight` of it on a turn if it has that much. Credit is below `max_weight` before and
/// below `2 · max_weight` after earning, so a backend takes at most one turn per round, the
/// heaviest exactly one, and a backend of weight `w` one per `max_weight / w` rounds.
///
/// A backend's credit after `r` rounds is `r · w mod max_weight`, so the rounds repeat with
/// period `P = max_weight / gcd(max_weight, every w)`: 1 with equal weights, 10 with weights
/// 1..=10. When one period's turns fit in the ring (so the fill consumes at least one whole
/// period anyway), [`Turns::new`] computes them once and [`Turns::next_round`] replays them,
/// instead of updating every backend's credit every round.
struct Turns {
    weights: Vec<u64>,
    /// Weight earned and not yet spent, per backend; below `max_weight` between rounds.
    credits: Vec<u64>,
    max_weight: u64,
    /// The rounds computed so far, concatenated (one period of them once it is complete).
    turns: Vec<u32>,
    /// Where each round starts in `turns`, and where the last one ends.
    starts: Vec<usize>,
    /// Whether `turns` holds a whole period, so rounds are replayed rather than computed.
    replay: bool,
    /// The round to return next, in `0..P` when replaying.
    next: usize,
}

impl Turns {
    /// `size` bounds the work spent on precomputing a period: at most as many turns as the
    /// ring has slots.
    fn new(backends: &[&MaglevBackend<'_>], size: u32) -> Self {
        let weights: Vec<u64> = backends
            .iter()
            .map(|backend| u64::from(backend.weight))
            .collect();
        let max_weight = weights.iter().copied().max().unwrap_or(1);
        let mut turns = Self {
            credits: vec![0; weights.len()],
            max_weight,
            turns: Vec::new(),
            starts: vec![0],
            replay: false,
            next: 0,
            weights,
        };
        if turns.turns_per_period() <= u64::from(size) {
            for _ in 0..turns.period() {
                turns.compute_round();
            }
            turns.replay = true;
        }
        turns
    }

    /// `P = max_weight / gcd(max_weight, every weight)`, the number of rounds after which
    /// every credit is back to 0.
    fn period(&self) -> u64 {
        self.max_weight / self.weights_gcd()
    }

    /// The number of turns in one period: each backend of weight `w` takes `w / gcd` of them.
    fn turns_per_period(&self) -> u64 {
        let gcd = self.weights_gcd();
        // At most 2^32 backends of weight below 2^32: the sum fits a u64.
        self.weights.iter().map(|weight| weight / gcd).sum()
    }

    fn weights_gcd(&self) -> u64 {
        self.weights.iter().fold(self.max_weight, |a, &b| gcd(a, b))
    }

    /// Runs one round of credits and appends the indices of the backends taking a turn.
    fn compute_round(&mut self) {
        // Whether a backend of intermediate weight takes its turn is a coin flip for the
        // branch predictor, so the list is built without branching: every index is written,
        // and the length only grows past it when the backend takes its turn.
        let max_weight = self.max_weight;
        let start = self.turns.len();
        self.turns.resize(start + self.weights.len(), 0);
        let round = &mut self.turns[start..];
        let mut len = 0;
        for (index, (credit, &weight)) in self.credits.iter_mut().zip(&self.weights).enumerate() {
            *credit += weight;
            let takes_turn = *credit >= max_weight;
            *credit -= if takes_turn { max_weight } else { 0 };
            // `len <= index`, and the index fits a u32 (at most `size` backends).
            round[len] = index as u32;
            len += usize::from(takes_turn);
        }
        self.turns.truncate(start + len);
        self.starts.push(start + len);
    }

    /// The indices of the backends taking a turn in the next round, in identity order. Never
    /// empty, because the heaviest backend takes a turn every round.
    fn next_round(&mut self) -> &[u32] {
        if self.replay {
            let round = self.next;
            self.next = if round + 2 == self.starts.len() {
                0
            } else {
                round + 1
            };
            return &self.turns[self.starts[round]..self.starts[round + 1]];
        }
        // A period too long to store: compute every round, keeping only the current one.
        self.turns.clear();
        self.starts.truncate(1);
        self.compute_round();
        &self.turns
    }
}

/// Greatest common divisor, by Euclid's algorithm; `gcd(a, 0) = a`.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One backend's walk through its preference permutation `offset, offset + skip, ...`
/// (mod M), computed lazily: the paper's full `N × M` permutation table would be 256 MB for
/// 1000 backends and M = 65537, while each backend only ever reads a prefix of its row.
///
/// 16 bytes, so 1000 backends' cursors (16 KB) and the slot bitmap (8 KB) share the L1 cache.
struct Cursor {
    /// Value written into the slots this backend claims.
    id: u32,
    /// The next slot of the permutation to try. Every slot before it in the permutation is
    /// owned (by this backend or by one that claimed it first), and owned slots stay owned.
    next: u32,
    /// Step between preferences, in `1..M`; coprime with M because M is prime, so the walk
    /// visits every slot exactly once per M steps.
    skip: u32,
    /// `skip⁻¹ mod M`, computed when the backend first claims from the [`FreeList`]; 0 before.
    inverse_skip: u32,
}

impl Cursor {
    fn new(backend: &MaglevBackend<'_>, size: u32) -> Self {
        let (offset, skip) = offset_and_skip(backend.identity, size);
        Self {
            id: backend.id,
            next: offset,
            skip,
            inverse_skip: 0,
        }
    }

    /// Claims the first slot at or after the cursor that is still free, by walking the
    /// permutation. Terminates because at least one slot is free, slots never become free
    /// again (so every free slot is still ahead in this backend's permutation), and the
    /// permutation covers every slot.
    fn claim_by_probing(&mut self, taken: &mut SlotSet, size: u32) -> u32 {
        // Locals rather than fields, so the loop keeps them in registers.
        let (skip, rewind) = (self.skip, size - self.skip);
        let mut slot = self.next;
        while taken.contains(slot) {
            slot = step_forward(slot, skip, rewind);
        }
        taken.insert(slot);
        self.next = step_forward(slot, skip, rewind);
        slot
    }

    /// The same claim as [`Cursor::claim_by_probing`], walking the permutation's even and odd
    /// positions as two chains of steps of `2 · skip`: a claim that walks many slots is bound
    /// by the latency of the step (a compare and a conditional move), which two independent
    /// chains halve.
    fn claim_by_probing_pairs(&mut self, taken: &mut SlotSet, size: u32) -> u32 {
        let (skip, rewind) = (self.skip, size - self.skip);
        // `2 · skip mod M`; 0 only for M = 2, where the even positions are indeed all `next`.
        let double_skip = step_forward(skip, skip, rewind);
        let double_rewind = size - double_skip;
        let mut even = self.next;
        let mut odd = step_forward(even, skip, rewind);
        // `&` rather than `&&`: one branch per pair.
        while taken.contains(even) & taken.contains(odd) {
            even = step_forward(even, double_skip, double_rewind);
            odd = step_forward(odd, double_skip, double_rewind);
        }
        // The even position comes first in the permutation.
        let slot = if taken.contains(even) { odd } else { even };
        taken.insert(slot);
        self.next = step_forward(slot, skip, rewind);
        slot
    }

    /// The same claim as [`Cursor::claim_by_probing`], `K` (at most 64) permutation slots at a
    /// time: their free bits go into a mask without branching, and the first set bit names the
    /// claimed slot. The only branch, whether the block has a free slot at all, is well
    /// predicted while `K` exceeds the expected number of probes `M / free` by enough.
    fn claim_by_blocks<const K: usize>(&mut self, taken: &mut SlotSet, size: u32) -> u32 {
        let rewind = size - self.skip;
        let mut slot = self.next;
        loop {
            let mut slots = [0; K];
            let mut free_mask: u64 = 0;
            for (bit, candidate) in slots.iter_mut().enumerate() {
                *candidate = slot;
                free_mask |= u64::from(!taken.contains(slot)) << bit;
                slot = step_forward_branchless(slot, rewind, size);
            }
            if free_mask != 0 {
                let claimed = slots[free_mask.trailing_zeros() as usize];
                taken.insert(claimed);
                self.next = step_forward_branchless(claimed, rewind, size);
                return claimed;
            }
        }
    }
}

/// [`step_forward`] with arithmetic instead of a condition, which the compiler may otherwise
/// turn into an unpredictable branch once the block loop is unrolled: `slot − rewind`, plus M
/// when that is negative.
fn step_forward_branchless(slot: u32, rewind: u32, size: u32) -> u32 {
    let difference = i64::from(slot) - i64::from(rewind);
    // In `0..M` after the correction, so it fits a u32.
    (difference + (i64::from(size) & (difference >> 63))) as u32
}

/// `(slot + skip) % M`, given `rewind = M - skip`, without a division and without overflow even
/// for M > 2^31.
fn step_forward(slot: u32, skip: u32, rewind: u32) -> u32 {
    if slot >= rewind {
        slot - rewind
    } else {
        slot + skip
    }
}

/// Which ring slots are owned, one bit per slot: 8 KB for M = 65537, so the probe loop stays in
/// the L1 cache instead of reading the 256 KB ring.
struct SlotSet {
    words: Vec<u64>,
}

impl SlotSet {
    fn new(size: u32) -> Self {
        Self {
            words: vec![0; (size as usize).div_ceil(64)],
        }
    }

    fn contains(&self, slot: u32) -> bool {
        self.words[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    fn insert(&mut self, slot: u32) {
        self.words[(slot / 64) as usize] |= 1 << (slot % 64);
    }
}

/// The last free slots of the ring, for claiming without walking permutations.
///
/// With `free` slots left, a claim by probing walks about `M / free` slots, so the last few
/// hundred claims of a ring of 65537 would take more than 40% of all probes. Instead, the
/// claim computes for every free slot `s` how many steps of the backend's permutation separate
/// it from the cursor, `(s − next) · skip⁻¹ mod M`, and takes the nearest: exactly the slot
/// the walk would reach first, for `free` multiplications and no unpredictable branch.
struct FreeList {
    /// The free slots, in no particular order.
    slots: Vec<u32>,
    /// Reduces the step counts modulo M.
    modulus: BarrettModulus,
}

impl FreeList {
    fn new(taken: &SlotSet, size: u32) -> Self {
        let mut slots = Vec::new();
        for (index, &word) in taken.words.iter().enumerate() {
            let mut free_bits = !word;
            while free_bits != 0 {
                // Below `64 · words.len() <= 2^32` (M < 2^32), so it fits a u32.
                let slot = (index * 64) as u32 + free_bits.trailing_zeros();
                if slot < size {
                    slots.push(slot);
                }
                free_bits &= free_bits - 1;
            }
        }
        Self {
            slots,
            modulus: BarrettModulus::new(size),
        }
    }

    /// Takes the free slot that `cursor` reaches first in its permutation and moves the cursor
    /// past it. The list must not be empty.
    fn claim(&mut self, cursor: &mut Cursor, size: u32) -> u32 {
        if cursor.inverse_skip == 0 {
            cursor.inverse_skip = modular_inverse(cursor.skip, size);
        }
        let (next, inverse_skip, size) = (
            i64::from(cursor.next),
            u64::from(cursor.inverse_skip),
            i64::from(size),
        );
        let (mut nearest_index, mut nearest_steps) = (0, u64::MAX);
        for (index, &slot) in self.slots.iter().enumerate() {
            // `(slot − next) mod M` without a branch: M is added when the difference is
            // negative (its sign bit, spread over 64 bits, masks M).
            let difference = i64::from(slot) - next;
            let distance = (difference + (size & (difference >> 63))) as u64;
            let steps = self.modulus.reduce(distance * inverse_skip);
            if steps < nearest_steps {
                (nearest_index, nearest_steps) = (index, steps);
            }
        }
        let slot = self.slots.swap_remove(nearest_index);
        cursor.next = step_forward(slot, cursor.skip, size as u32 - cursor.skip);
        slot
    }
}

/// `x` such that `x · value ≡ 1 (mod modulus)`, by the extended Euclidean algorithm; `value`
/// must be coprime with `modulus` (any `value` in `1..M` for a prime M).
fn modular_inverse(value: u32, modulus: u32) -> u32 {
    let (mut remainder, mut next_remainder) = (i64::from(value), i64::from(modulus));
    let (mut coefficient, mut next_coefficient) = (1_i64, 0_i64);
    while next_remainder != 0 {
        let quotient = remainder / next_remainder;
        (remainder, next_remainder) = (next_remainder, remainder - quotient * next_remainder);
        (coefficient, next_coefficient) =
            (next_coefficient, coefficient - quotient * next_coefficient);
    }
    debug_assert_eq!(remainder, 1, "{value} is not invertible modulo {modulus}");
    // In `0..modulus`, so it fits a u32.
    coefficient.rem_euclid(i64::from(modulus)) as u32
}

/// `x mod M` by Barrett reduction: one 64×64→128-bit multiplication instead of a 64-bit
/// division, which costs tens of cycles.
struct BarrettModulus {
    modulus: u64,
    /// `⌊(2^64 − 1) / M⌋`.
    reciprocal: u64,
}

impl BarrettModulus {
    fn new(modulus: u32) -> Self {
        let modulus = u64::from(modulus);
        Self {
            modulus,
            reciprocal: u64::MAX / modulus,
        }
    }

    /// `value mod M`. The quotient estimate `⌊value · reciprocal / 2^64⌋` is the true quotient
    /// or one less, because `reciprocal > 2^64 / M − 1` makes the error below
    /// `value / 2^64 < 1`; so one conditional subtraction finishes the job.
    fn reduce(&self, value: u64) -> u64 {
        // The high half of a 128-bit product fits a u64.
        let quotient = ((u128::from(value) * u128::from(self.reciprocal)) >> 64) as u64;
        let remainder = value - quotient * self.modulus;
        if remainder >= self.modulus {
            remainder - self.modulus
        } else {
            remainder
        }
    }
}

// The two seeds are arbitrary but fixed forever: changing either reshuffles every ring.

/// Seed of the hash giving a backend's first preferred slot (`offset`).
const OFFSET_SEED: u64 = 0x6c62_272e_07bb_0142;
/// Seed of the hash giving the step between a backend's preferred slots (`skip`).
const SKIP_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The Maglev paper's `offset = h1(identity) % M` and `skip = h2(identity) % (M - 1) + 1`,
/// with `h1`, `h2` the same stable hash under two seeds. `size` must be at least 2.
fn offset_and_skip(identity: &[u8], size: u32) -> (u32, u32) {
    let size = u64::from(size);
    let offset = seeded_hash(OFFSET_SEED, identity) % size;
    let skip = seeded_hash(SKIP_SEED, identity) % (size - 1) + 1;
    // Both are below `size`, which came from a u32.
    (offset as u32, skip as u32)
}

/// A 64-bit hash that is identical on every platform, run and Rust version (unlike std's
/// `DefaultHasher`): FNV-1a over the seed's little-endian bytes then the identity, followed by
/// the splitmix64 finalizer, because FNV-1a alone mixes the last bytes poorly into the high
/// bits and identities often differ only in their last bytes (e.g. consecutive addresses).
fn seeded_hash(seed: u64, identity: &[u8]) -> u64 {
    let state = fnv1a64(FNV_OFFSET_BASIS, &seed.to_le_bytes());
    splitmix64_finalize(fnv1a64(state, identity))
}

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a 64-bit hash from `state` over `bytes`.
fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The output function of splitmix64 (Steele, Lea, Flood 2014): a bijective avalanche mix.
fn splitmix64_finalize(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The production ring size.
    const M: u32 = 65537;

    /// Owned identities for `n` backends, the shape the agent uses (address and port).
    fn identities(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256).into_bytes())
            .collect()
    }

    /// Backend `i` gets id `i`, identity `identities[i]` and weight `weights[i]`.
    fn backends<'a>(identities: &'a [Vec<u8>], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        identities
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (identity, &weight))| MaglevBackend {
                id: i as u32,
                identity,
                weight,
            })
            .collect()
    }

    fn ring(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
        build_ring(backends, size).expect("valid configuration")
    }

    /// Number of slots each id `0..n` owns.
    fn slot_counts(ring: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &id in ring {
            counts[id as usize] += 1;
        }
        counts
    }

    /// Fraction of the slots not owned by `excluded` in `before` whose owner differs in
    /// `after` (`excluded: None` counts every slot).
    fn moved_fraction(before: &[u32], after: &[u32], excluded: Option<u32>) -> f64 {
        let (mut kept, mut moved) = (0usize, 0usize);
        for (&old, &new) in before.iter().zip(after) {
            if Some(old) != excluded {
                kept += 1;
                moved += usize::from(old != new);
            }
        }
        moved as f64 / kept as f64
    }

    /// N equal backends, then the same without backend `removed`: the fraction of the slots
    /// of the other backends that changed owner.
    fn removal_disruption(n: usize, removed: usize) -> f64 {
        let ids = identities(n);
        let all = backends(&ids, &vec![1; n]);
        let remaining: Vec<MaglevBackend<'_>> = all
            .iter()
            .filter(|backend| backend.id != removed as u32)
            .copied()
            .collect();
        moved_fraction(&ring(&all, M), &ring(&remaining, M), Some(removed as u32))
    }

    /// N equal backends, then one more: the fraction of all slots that changed owner.
    fn addition_disruption(n: usize) -> f64 {
        let ids = identities(n + 1);
        let all = backends(&ids, &vec![1; n + 1]);
        moved_fraction(&ring(&all[..n], M), &ring(&all, M), None)
    }

    /// FNV-1a 64 over the ring's little-endian bytes: a compact golden value.
    fn checksum(ring: &[u32]) -> u64 {
        ring.iter().fold(FNV_OFFSET_BASIS, |hash, id| {
            fnv1a64(hash, &id.to_le_bytes())
        })
    }

    /// The paper's algorithm written as plainly as possible: the full permutation table with
    /// `(offset + j·skip) % M`, and the weighted rounds as nested loops. `build_ring` must
    /// agree with it exactly.
    fn reference_ring(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
        let mut weighted: Vec<&MaglevBackend<'_>> = backends
            .iter()
            .filter(|backend| backend.weight > 0)
            .collect();
        weighted.sort_by(|left, right| left.identity.cmp(right.identity));
        let m = u64::from(size);
        let permutations: Vec<Vec<usize>> = weighted
            .iter()
            .map(|backend| {
                let offset = seeded_hash(OFFSET_SEED, backend.identity) % m;
                let skip = seeded_hash(SKIP_SEED, backend.identity) % (m - 1) + 1;
                (0..m).map(|j| ((offset + j * skip) % m) as usize).collect()
            })
            .collect();
        let mut ring = vec![NO_BACKEND; size as usize];
        let Some(max_weight) = weighted.iter().map(|backend| backend.weight).max() else {
            return ring;
        };
        let mut next = vec![0; weighted.len()];
        let mut credit = vec![0; weighted.len()];
        let mut filled = 0;
        while filled < size {
            for (i, backend) in weighted.iter().enumerate() {
                credit[i] += backend.weight;
                if credit[i] < max_weight || filled == size {
                    continue;
                }
                credit[i] -= max_weight;
                while ring[permutations[i][next[i]]] != NO_BACKEND {
                    next[i] += 1;
                }
                ring[permutations[i][next[i]]] = backend.id;
                filled += 1;
            }
        }
        ring
    }

    /// The cases the proptest above is too small to reach: many backends, a ring where the
    /// switch from probing to scanning falls in the middle of a round, and weights that make
    /// rounds of different lengths.
    #[test]
    fn many_backends_match_the_reference_algorithm() {
        let ids = identities(300);
        for weights in [vec![1; 300], (0..300).map(|i| (i % 7) as u32).collect()] {
            let backends = backends(&ids, &weights);
            for size in [307, 4099, 16411] {
                assert_eq!(
                    ring(&backends, size),
                    reference_ring(&backends, size),
                    "M = {size}"
                );
            }
        }
    }

    #[test]
    fn hash_building_blocks_match_reference_vectors() {
        // FNV-1a 64 reference vectors (Fowler, Noll, Vo test suite).
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        // The first output of splitmix64 seeded with 0 is the finalizer of the golden gamma.
        assert_eq!(
            splitmix64_finalize(0x9e37_79b9_7f4a_7c15),
            0xe220_a839_7b1d_cdaf
        );
    }

    #[test]
    fn is_prime_matches_trial_division() {
        let naive = |n: u32| n >= 2 && (2..n).all(|d| !n.is_multiple_of(d));
        for n in 0..2000 {
            assert_eq!(is_prime(n), naive(n), "{n}");
        }
        assert!(is_prime(M));
        assert!(is_prime(4_294_967_291)); // the largest u32 prime
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65521 * 65519)); // product of two large primes
    }

    #[test]
    fn rejects_size_that_is_not_prime() {
        let ids = identities(3);
        let backends = backends(&ids, &[1, 1, 1]);
        for size in [0, 1, 4, 9, 65536] {
            assert_eq!(
                build_ring(&backends, size),
                Err(MaglevError::SizeNotPrime { size })
            );
        }
        // Checked even when no backend would get a slot.
        assert_eq!(
            build_ring(&[], 100),
            Err(MaglevError::SizeNotPrime { size: 100 })
        );
        assert_eq!(
            MaglevError::SizeNotPrime { size: 100 }.to_string(),
            "Maglev ring size 100 is not a prime"
        );
    }

    #[test]
    fn rejects_size_smaller_than_weighted_backends() {
        let ids = identities(6);
        let weights = [1, 1, 1, 1, 0, 0];
        let error = build_ring(&backends(&ids, &weights), 3).expect_err("too small");
        assert_eq!(
            error,
            MaglevError::SizeTooSmall {
                size: 3,
                weighted_backends: 4
            }
        );
        assert_eq!(
            error.to_string(),
            "Maglev ring size 3 is smaller than the number of weighted backends (4)"
        );
        // Weight-0 backends do not count: 4 weighted backends fit in 5 slots.
        let small = ring(&backends(&ids, &weights), 5);
        assert!(small.iter().all(|&id| id < 4));
        // Exactly as many slots as backends: one slot each.
        let exact = ring(&backends(&ids[..5], &[1; 5]), 5);
        assert_eq!(slot_counts(&exact, 5), vec![1; 5]);
    }

    #[test]
    fn rejects_duplicate_identity() {
        let backends = [
            MaglevBackend {
                id: 0,
                identity: b"b",
                weight: 1,
            },
            MaglevBackend {
                id: 1,
                identity: b"\x0a\xff",
                weight: 1,
            },
            // Even with weight 0: it would get slots as soon as its weight is raised.
            MaglevBackend {
                id: 2,
                identity: b"\x0a\xff",
                weight: 0,
            },
        ];
        let error = build_ring(&backends, 13).expect_err("duplicate");
        assert_eq!(
            error,
            MaglevError::DuplicateIdentity {
                identity: vec![0x0a, 0xff]
            }
        );
        assert_eq!(error.to_string(), "duplicate backend identity 0x0aff");
    }

    #[test]
    fn without_weighted_backend_every_slot_is_no_backend() {
        assert_eq!(build_ring(&[], 13), Ok(vec![NO_BACKEND; 13]));
        let ids = identities(3);
        assert_eq!(
            build_ring(&backends(&ids, &[0, 0, 0]), 7),
            Ok(vec![NO_BACKEND; 7])
        );
    }

    #[test]
    fn smallest_ring_works() {
        let ids = identities(2);
        assert_eq!(
            slot_counts(&ring(&backends(&ids, &[1, 1]), 2), 2),
            vec![1, 1]
        );
        assert_eq!(ring(&backends(&ids[..1], &[3]), 2), vec![0, 0]);
    }

    #[test]
    fn weights_one_one_two_get_a_quarter_a_quarter_and_a_half() {
        let ids = identities(3);
        let counts = slot_counts(&ring(&backends(&ids, &[1, 1, 2]), M), 3);
        // 65537 / 4 = 16384.25: the heavy backend claims every round, the light ones every
        // other round, so the counts are exact up to the last, partial round.
        for (count, expected) in counts.iter().zip([16384.25, 16384.25, 32768.5]) {
            assert!((*count as f64 - expected).abs() <= 1.0, "{counts:?}");
        }
    }

    #[test]
    fn extreme_weights_do_not_overflow() {
        let ids = identities(3);
        let weights = [u32::MAX, u32::MAX - 1, 1];
        let counts = slot_counts(&ring(&backends(&ids, &weights), 97), 3);
        // The two heavy backends alternate; the light one's share (2^-32 of the ring) is none.
        assert_eq!(counts[0] + counts[1], 97, "{counts:?}");
        assert!(counts[0].abs_diff(counts[1]) <= 1, "{counts:?}");
    }

    /// One input of [`pinned_rings`]: a name for the failure message, the backends' identities
    /// and weights (backend `i` gets id `i`), and the ring size.
    struct PinnedCase {
        name: String,
        identities: Vec<Vec<u8>>,
        weights: Vec<u32>,
        size: u32,
    }

    /// Identities of irregular lengths and bytes (not only addresses), from a fixed LCG.
    fn odd_identities(n: usize) -> Vec<Vec<u8>> {
        let mut state: u64 = 0x1234_5678_9abc_def0;
        (0..n)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let len = 1 + (state >> 59) as usize;
                let mut identity: Vec<u8> = state
                    .to_le_bytes()
                    .iter()
                    .cycle()
                    .take(len)
                    .copied()
                    .collect();
                identity.extend_from_slice(&(i as u32).to_be_bytes());
                identity
            })
            .collect()
    }

    /// The inputs whose rings [`pinned_rings`] pins: small and large pools, equal, mixed,
    /// zero and extreme weights, and every ring size the other tests and the benchmark use.
    fn pinned_cases() -> Vec<PinnedCase> {
        let mut cases = Vec::new();
        let mut add = |name: &str, identities: Vec<Vec<u8>>, weights: Vec<u32>, size: u32| {
            cases.push(PinnedCase {
                name: format!("{name} M={size}"),
                identities,
                weights,
                size,
            });
        };
        for size in [2, 3, 13, 97, M] {
            add("1 backend", identities(1), vec![1], size);
        }
        for size in [3, 5, 13, 31, 97, 1009, M, 655_373] {
            add("3 equal", identities(3), vec![1; 3], size);
            add("3 weighted 1,1,2", identities(3), vec![1, 1, 2], size);
            add("3 with a weight 0", identities(3), vec![2, 0, 5], size);
        }
        add(
            "3 extreme",
            identities(3),
            vec![u32::MAX, u32::MAX - 1, 1],
            97,
        );
        add(
            "3 extreme",
            identities(3),
            vec![u32::MAX, u32::MAX - 1, 1],
            M,
        );
        add("2 equal", identities(2), vec![1, 1], 2);
        add("5 in 5", identities(5), vec![1; 5], 5);
        add("6 with zeros", identities(6), vec![1, 1, 1, 1, 0, 0], 5);
        for n in [10, 100, 1000] {
            for size in [M, 655_373] {
                add(&format!("{n} equal"), identities(n), vec![1; n], size);
                let weighted = (0..n).map(|i| 1 + (i % 10) as u32).collect();
                add(
                    &format!("{n} weighted 1..=10"),
                    identities(n),
                    weighted,
                    size,
                );
            }
        }
        for size in [307, 1009, 4099, 16411, M] {
            add("300 equal", identities(300), vec![1; 300], size);
            let zeros = (0..300).map(|i| (i % 7) as u32).collect();
            add("300 weights i%7", identities(300), zeros, size);
            let odd = (0..300).map(|i| [1, 3, 1000, 7, 0][i % 5]).collect();
            add("300 odd identities", odd_identities(300), odd, size);
        }
        // The benchmark's identities: addresses without a port.
        let bench_ids: Vec<Vec<u8>> = (0..1000)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256).into_bytes())
            .collect();
        for size in [M, 655_373] {
            add("bench equal", bench_ids.clone(), vec![1; 1000], size);
            let weighted = (0..1000).map(|i| 1 + (i % 10) as u32).collect();
            add("bench weighted", bench_ids.clone(), weighted, size);
        }
        add(
            "1000 one heavy",
            identities(1000),
            (0..1000).map(|i| if i == 17 { 1000 } else { 1 }).collect(),
            M,
        );
        cases
    }

    /// Checksums of the rings of [`pinned_cases`], in order, recorded from the implementation
    /// before its optimisation (commit a686308): every agent version must build the same rings.
    const PINNED_CHECKSUMS: &[u64] = &[
        0xa8c7f832281a39c5, // 1 backend M=2
        0x5467b0da1d106495, // 1 backend M=3
        0x5c569877000ae3b5, // 1 backend M=13
        0x19bfca1c989751f5, // 1 backend M=97
        0x4ebe9b86711e13f5, // 1 backend M=65537
        0x756241e1be8c9396, // 3 equal M=3
        0x1ff3f111c7bd8bd6, // 3 weighted 1,1,2 M=3
        0x00f92a08bcce41b5, // 3 with a weight 0 M=3
        0x03dc0901c8da9f27, // 3 equal M=5
        0xb2de293b1f38a206, // 3 weighted 1,1,2 M=5
        0x12e37d32c902e575, // 3 with a weight 0 M=5
        0x2417ee300c5f88f5, // 3 equal M=13
        0x50511d90d2d91ee6, // 3 weighted 1,1,2 M=13
        0x4fd37464cff67d97, // 3 with a weight 0 M=13
        0xa4f2c714bb32e1c5, // 3 equal M=31
        0x1c734cdb8fa1b087, // 3 weighted 1,1,2 M=31
        0x922c6c77cc094475, // 3 with a weight 0 M=31
        0x186a84489dcfe635, // 3 equal M=97
        0x5ae74108769c9177, // 3 weighted 1,1,2 M=97
        0x4ab44dafe32ad117, // 3 with a weight 0 M=97
        0xf4270f53f0ded675, // 3 equal M=1009
        0x8ec6c1baa0cd8f27, // 3 weighted 1,1,2 M=1009
        0x9fbca6fd3be8c797, // 3 with a weight 0 M=1009
        0xa04565a4e01eec87, // 3 equal M=65537
        0x6d1542c7f40f5837, // 3 weighted 1,1,2 M=65537
        0x9f9718a18d9e2f95, // 3 with a weight 0 M=65537
        0xaadb17f6cf309a37, // 3 equal M=655373
        0x2c288dbe40b20f56, // 3 weighted 1,1,2 M=655373
        0xc5e89b67ba0f20d5, // 3 with a weight 0 M=655373
        0x925f65101baf7b35, // 3 extreme M=97
        0xb56e1df5355f2795, // 3 extreme M=65537
        0x08cd4c29d1e47d34, // 2 equal M=2
        0x90d1cef037778be1, // 5 in 5 M=5
        0x65dfdd71a2b06ea5, // 6 with zeros M=5
        0x41172f83f687d553, // 10 equal M=65537
        0xc814225e348d7a67, // 10 weighted 1..=10 M=65537
        0x55e658c887b56197, // 10 equal M=655373
        0xd4326c75bf84c9a7, // 10 weighted 1..=10 M=655373
        0x3828a46be39230af, // 100 equal M=65537
        0x5a5127de8fdc82ce, // 100 weighted 1..=10 M=65537
        0x6bff59d4cb0a3fd3, // 100 equal M=655373
        0x003feab8d8d0b358, // 100 weighted 1..=10 M=655373
        0x0a85576af8d2028f, // 1000 equal M=65537
        0xf7504aec23a4be9f, // 1000 weighted 1..=10 M=65537
        0x12b5d25baf5b5b5a, // 1000 equal M=655373
        0xe90de84916f718d3, // 1000 weighted 1..=10 M=655373
        0x2a4063adf5c3fdc4, // 300 equal M=307
        0xf32136cf865ba5fd, // 300 weights i%7 M=307
        0x9a32d7e6bcd7bfd4, // 300 odd identities M=307
        0xb0d251449fef5be0, // 300 equal M=1009
        0x85c7744d0303d510, // 300 weights i%7 M=1009
        0x2d362928b5742e50, // 300 odd identities M=1009
        0x6e22b7f438989eb4, // 300 equal M=4099
        0xb738c4e3530a5fe1, // 300 weights i%7 M=4099
        0x1fc8820e3ceeb72d, // 300 odd identities M=4099
        0x9495f3afafbc8c00, // 300 equal M=16411
        0xcb59d9fd2c192de8, // 300 weights i%7 M=16411
        0x83a5279c64aaa702, // 300 odd identities M=16411
        0xf759f8cd68063d6b, // 300 equal M=65537
        0x3de2deb132e14e64, // 300 weights i%7 M=65537
        0x5d4d941e7279cfc3, // 300 odd identities M=65537
        0xd3e70ec3830298e3, // bench equal M=65537
        0x3b408eafb5040933, // bench weighted M=65537
        0x7d155e41d43e7a7b, // bench equal M=655373
        0x96724bd93e62d4e6, // bench weighted M=655373
        0x1c81abdab8ccea6a, // 1000 one heavy M=65537
    ];

    /// Pins the output for many inputs, so that an optimisation of the builder cannot change a
    /// single slot: agents of different versions must agree on every ring during an upgrade.
    #[test]
    fn pinned_rings() {
        let computed: Vec<(String, u64)> = pinned_cases()
            .into_iter()
            .map(|case| {
                let backends = backends(&case.identities, &case.weights);
                (case.name, checksum(&ring(&backends, case.size)))
            })
            .collect();
        let table: String = computed
            .iter()
            .map(|(name, sum)| format!("        {sum:#018x}, // {name}\n"))
            .collect();
        assert_eq!(computed.len(), PINNED_CHECKSUMS.len(), "computed:\n{table}");
        for ((name, sum), expected) in computed.iter().zip(PINNED_CHECKSUMS) {
            assert_eq!(sum, expected, "{name}; computed:\n{table}");
        }
    }

    /// Pins the algorithm: any change to hashing, sorting or claiming order breaks these.
    #[test]
    fn golden_rings() {
        let backends = [
            MaglevBackend {
                id: 7,
                identity: b"10.0.0.1:80",
                weight: 1,
            },
            MaglevBackend {
                id: 8,
                identity: b"10.0.0.2:80",
                weight: 1,
            },
            MaglevBackend {
                id: 9,
                identity: b"10.0.0.3:80",
                weight: 2,
            },
        ];
        assert_eq!(ring(&backends, 13), [8, 9, 8, 8, 9, 9, 9, 7, 7, 9, 9, 7, 9]);
        assert_eq!(checksum(&ring(&backends, M)), 0xd285_b2a7_28c2_8dbc);
    }

    /// Worst fraction of the other backends' slots that may change owner when one backend of N
    /// (3 ≤ N ≤ 50, M = 65537) is removed, and excess over the `1/(N+1)` that must move when
    /// one is added. Measured over all those cases (`report_disruption`): at most 0.62% and
    /// 0.55%.
    const DISRUPTION_BOUND: f64 = 0.01;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Lazy cursors, credits and bitmap give exactly the paper's ring.
        #[test]
        fn matches_the_reference_algorithm(
            weights in prop::collection::vec(0u32..=4, 0..=20),
            size in prop::sample::select(vec![2u32, 3, 5, 13, 31, 97, 1009]),
        ) {
            let ids = identities(weights.len());
            let backends = backends(&ids, &weights);
            let weighted = weights.iter().filter(|&&weight| weight > 0).count();
            if weighted > size as usize {
                prop_assert!(build_ring(&backends, size).is_err());
            } else {
                prop_assert_eq!(ring(&backends, size), reference_ring(&backends, size));
            }
        }

        /// Every slot belongs to a weighted backend, and every backend whose fair share
        /// reaches 2 slots gets one.
        #[test]
        fn every_slot_has_a_weighted_owner(
            weights in prop::collection::vec(0u32..=3, 1..=40),
            size in prop::sample::select(vec![41u32, 97, 1009, 65537]),
        ) {
            let ids = identities(weights.len());
            let ring = ring(&backends(&ids, &weights), size);
            prop_assert_eq!(ring.len(), size as usize);
            let total: u32 = weights.iter().sum();
            if total == 0 {
                prop_assert!(ring.iter().all(|&id| id == NO_BACKEND));
                return Ok(());
            }
            for &id in &ring {
                prop_assert!(weights.get(id as usize).is_some_and(|&w| w > 0), "{}", id);
            }
            for (count, &weight) in slot_counts(&ring, weights.len()).iter().zip(&weights) {
                if u64::from(size) * u64::from(weight) >= 2 * u64::from(total) {
                    prop_assert!(*count > 0);
                }
            }
        }

        /// Equal weights: every backend owns ⌊M/N⌋ or ⌈M/N⌉ slots (each round every backend
        /// claims one slot; only the last round is partial): within 0.16% of M/N for N ≤ 100,
        /// far inside 1%.
        #[test]
        fn equal_weights_balance_to_one_slot(n in 1usize..=100) {
            let ids = identities(n);
            let mean = f64::from(M) / n as f64;
            for count in slot_counts(&ring(&backends(&ids, &vec![5; n]), M), n) {
                prop_assert!((count as f64 - mean).abs() < 1.0, "{} vs {}", count, mean);
            }
        }

        /// Weights 1..=10: each backend's share is within 1% (relative) of weight / total.
        /// Exactly: count = M·w/W + d with -2 < d < 2·N·w/W slots (each backend is less than
        /// one slot behind its credit, plus the partial last round), which is under 1% while
        /// M·w/W ≥ 200, i.e. W ≤ 327: hence N ≤ 30.
        #[test]
        fn weighted_shares_match_weights(weights in prop::collection::vec(1u32..=10, 1..=30)) {
            let ids = identities(weights.len());
            let ring = ring(&backends(&ids, &weights), M);
            let total = f64::from(weights.iter().sum::<u32>());
            let n = weights.len() as f64;
            for (count, &weight) in slot_counts(&ring, weights.len()).iter().zip(&weights) {
                let weight = f64::from(weight);
                let expected = f64::from(M) * weight / total;
                let deviation = *count as f64 - expected;
                prop_assert!(
                    deviation > -2.0 && deviation < 2.0 * n * weight / total,
                    "{} vs {}", count, expected
                );
                prop_assert!(deviation.abs() <= expected * 0.01, "{} vs {}", count, expected);
            }
        }

        /// Removing one of N equal backends: its slots must move; of the others' slots, under
        /// 1% change owner, so in all at most 1/N + 1% of the ring changes.
        #[test]
        fn removing_a_backend_moves_few_other_slots(
            (n, removed) in (3usize..=50).prop_flat_map(|n| (Just(n), 0..n)),
        ) {
            let moved = removal_disruption(n, removed);
            prop_assert!(moved <= DISRUPTION_BOUND, "{}", moved);
        }

        /// Adding one backend to N equal ones: 1/(N+1) of the slots must move to it; at most
        /// 1% more change owner.
        #[test]
        fn adding_a_backend_moves_few_slots(n in 3usize..=50) {
            let changed = addition_disruption(n);
            prop_assert!(changed <= 1.0 / (n + 1) as f64 + DISRUPTION_BOUND, "{}", changed);
        }

        /// The ring depends on the set of backends, not on their order.
        #[test]
        fn input_order_does_not_matter(
            (weights, order) in prop::collection::vec(0u32..=4, 1..=30).prop_flat_map(|w| {
                let n = w.len();
                (Just(w), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
            }),
        ) {
            let ids = identities(weights.len());
            let in_order = backends(&ids, &weights);
            let shuffled: Vec<MaglevBackend<'_>> = order.iter().map(|&i| in_order[i]).collect();
            prop_assert_eq!(build_ring(&in_order, 1009), build_ring(&shuffled, 1009));
            prop_assert_eq!(build_ring(&in_order, M), build_ring(&shuffled, M));
        }
    }

    /// Not a pass/fail test: prints the build time for 1000 equal backends and M = 65537.
    /// `cargo test --release --features user maglev::tests::report -- --ignored --nocapture`
    #[test]
    #[ignore = "timing report; run in release"]
    fn report_build_time() {
        let ids = identities(1000);
        let backends = backends(&ids, &[1; 1000]);
        let mut times: Vec<std::time::Duration> = (0..200)
            .map(|_| {
                let start = std::time::Instant::now();
                std::hint::black_box(build_ring(std::hint::black_box(&backends), M).ok());
                start.elapsed()
            })
            .collect();
        times.sort();
        println!(
            "1000 backends, M = {M}: min {:?}, median {:?}",
            times[0],
            times[times.len() / 2]
        );
    }

    /// Not a pass/fail test: prints balance and disruption figures, and the worst cases that
    /// justify [`DISRUPTION_BOUND`].
    #[test]
    #[ignore = "figures report; run in release"]
    fn report_disruption() {
        for n in [3usize, 10, 50, 100, 1000] {
            let ids = identities(n);
            let counts = slot_counts(&ring(&backends(&ids, &vec![1; n]), M), n);
            let removals: Vec<f64> = (0..n.min(20)).map(|r| removal_disruption(n, r)).collect();
            println!(
                "N={n}: slots per backend {}..={}; remove one: others' slots moved mean {:.3}% \
                 max {:.3}%; add one: slots changed {:.3}% (1/(N+1) = {:.3}%)",
                counts.iter().min().unwrap_or(&0),
                counts.iter().max().unwrap_or(&0),
                100.0 * removals.iter().sum::<f64>() / removals.len() as f64,
                100.0 * removals.iter().copied().fold(0.0, f64::max),
                100.0 * addition_disruption(n),
                100.0 / (n + 1) as f64,
            );
        }
        let worst_removal = (3..=50)
            .flat_map(|n| (0..n).map(move |r| removal_disruption(n, r)))
            .fold(0.0, f64::max);
        let worst_addition_excess = (3..=50)
            .map(|n| addition_disruption(n) - 1.0 / (n + 1) as f64)
            .fold(0.0, f64::max);
        println!(
            "N in 3..=50: worst removal {:.3}%, worst addition excess {:.3}%",
            100.0 * worst_removal,
            100.0 * worst_addition_excess
        );
    }
}
