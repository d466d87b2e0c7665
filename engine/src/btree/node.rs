//! Operations inside one btree block, on its bytes (`&[u8]` / `&mut [u8]`).
//!
//! The layout is `format::btree`'s: a 48-byte block header, a sorted array
//! of 48-byte item headers, values packed down from the end of the block
//! (8-byte aligned) and the `mid_free_len` gap between the two.
//!
//! Two kinds of function live here:
//! - **Readers** (`check_header`, `search`, `lower_bound`, `value`,
//!   `child_ref`, ...) work on any buffer, including a corrupt block read
//!   from disk: they never index past the buffer and report what doesn't
//!   fit as `None` or a [`BtreeLayoutProblem`].
//! - **Writers** (`insert`, `remove`, `replace`, `compact`, `append`,
//!   `prepend`, `truncate`, `remove_head`, ...) take a block that passed
//!   `check_btree_layout` (the tree checks every block before it first
//!   changes it in a transaction, and only writes consistent blocks
//!   itself). A panic in a writer is a broken invariant, not bad input.

use std::cmp::Reverse;

use crate::format::block::{BlockRef, BLOCK_LG_SIZE};
use crate::format::btree::{
    btree_block, btree_block_mut, btree_item_bytes, btree_item_offset, btree_item_value,
    btree_items, btree_items_mut, btree_val_space, BtreeItem, BtreeLayoutProblem,
    BTREE_BLOCK_HDR_BYTES, BTREE_ITEM_HDR_BYTES, BTREE_ITEM_SPACE, BTREE_MAX_HEIGHT,
    BTREE_MAX_ITEMS, BTREE_PARENT_VAL_LEN,
};
use crate::format::key::Key;

/// The fields of an item to write into a block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewItem<'a> {
    pub key: Key,
    pub seq: u64,
    pub flags: u8,
    pub val: &'a [u8],
}

impl NewItem<'_> {
    /// What the item adds to `total_item_bytes`.
    pub fn bytes(&self) -> usize {
        btree_item_bytes(self.val.len())
    }
}

// ---------------------------------------------------------------------------
// Readers

pub(crate) fn nr_items(b: &[u8]) -> usize {
    usize::from(btree_block(b).nr_items.get())
}

pub(crate) fn total_bytes(b: &[u8]) -> usize {
    usize::from(btree_block(b).total_item_bytes.get())
}

pub(crate) fn mid_free(b: &[u8]) -> usize {
    usize::from(btree_block(b).mid_free_len.get())
}

pub(crate) fn level(b: &[u8]) -> u8 {
    btree_block(b).level
}

/// The lowest byte any value may occupy.
fn val_start(b: &[u8]) -> usize {
    btree_item_offset(nr_items(b)) + mid_free(b)
}

/// The checks every read of a block makes before using it, in constant
/// time: the buffer is a whole block, the level is the one expected, and
/// the item headers and the free gap lie inside the block. With these, the
/// readers below stay inside the buffer; the full check
/// (`check_btree_layout`) runs before a block is changed.
pub(crate) fn check_header(b: &[u8], expected_level: u8) -> Result<(), BtreeLayoutProblem> {
    if b.len() != BLOCK_LG_SIZE {
        return Err(BtreeLayoutProblem::Length { found: b.len() });
    }
    let lvl = level(b);
    if lvl >= BTREE_MAX_HEIGHT || lvl != expected_level {
        return Err(BtreeLayoutProblem::Level {
            expected: Some(expected_level),
            found: lvl,
        });
    }
    let nr = nr_items(b);
    if nr > BTREE_MAX_ITEMS {
        return Err(BtreeLayoutProblem::TooManyItems { nr_items: nr });
    }
    let items_end = btree_item_offset(nr);
    if items_end + mid_free(b) > BLOCK_LG_SIZE {
        return Err(BtreeLayoutProblem::MidFree {
            items_end,
            mid_free_len: mid_free(b),
        });
    }
    let total = total_bytes(b);
    if total > BTREE_ITEM_SPACE || total < nr * BTREE_ITEM_HDR_BYTES {
        return Err(BtreeLayoutProblem::TotalItemBytes {
            expected: nr * BTREE_ITEM_HDR_BYTES,
            found: total,
        });
    }
    Ok(())
}

pub(crate) fn items(b: &[u8]) -> &[BtreeItem] {
    btree_items(b)
}

pub(crate) fn key_at(b: &[u8], i: usize) -> Key {
    items(b)[i].key()
}

pub(crate) fn last_key(b: &[u8]) -> Option<Key> {
    items(b).last().map(BtreeItem::key)
}

/// Exact search: `Ok(index)` of `key`, or `Err(index)` where it would go.
pub(crate) fn search(b: &[u8], key: &Key) -> Result<usize, usize> {
    items(b).binary_search_by(|it| it.key().cmp(key))
}

/// The index of the first item whose key is >= `key` (`nr_items` if none).
pub(crate) fn lower_bound(b: &[u8], key: &Key) -> usize {
    items(b).partition_point(|it| it.key() < *key)
}

/// The value of item `i`, or `None` if it doesn't lie inside the block.
pub(crate) fn value(b: &[u8], i: usize) -> Option<&[u8]> {
    btree_item_value(b, &items(b)[i])
}

/// The child reference held by parent item `i`, or `None` if the item's
/// value isn't a block reference inside the block.
pub(crate) fn child_ref(b: &[u8], i: usize) -> Option<BlockRef> {
    let v = value(b, i)?;
    if v.len() != BTREE_PARENT_VAL_LEN {
        return None;
    }
    Some(bytemuck::pod_read_unaligned(v))
}

/// Bytes item `i` counts in `total_item_bytes`.
pub(crate) fn item_bytes(b: &[u8], i: usize) -> usize {
    btree_item_bytes(usize::from(items(b)[i].val_len.get()))
}

fn range_bytes(b: &[u8], range: std::ops::Range<usize>) -> usize {
    items(b)[range]
        .iter()
        .map(|it| btree_item_bytes(usize::from(it.val_len.get())))
        .sum()
}

/// Where to split a block of at least two items: the first index at which
/// the items before it hold at least half the bytes, kept in `1..nr` so
/// both halves have items.
pub(crate) fn split_point(b: &[u8]) -> usize {
    let nr = nr_items(b);
    assert!(nr >= 2, "splitting a block of {nr} items");
    let half = total_bytes(b) / 2;
    let mut sum = 0;
    for i in 0..nr {
        if sum >= half {
            return i.clamp(1, nr - 1);
        }
        sum += item_bytes(b, i);
    }
    nr - 1
}

/// How many items from the front of `b` to move so that a block holding
/// `have` bytes reaches `target` bytes, leaving `b` at least one item.
pub(crate) fn head_count_for(b: &[u8], have: usize, target: usize) -> usize {
    let nr = nr_items(b);
    let mut sum = have;
    let mut c = 0;
    while c + 1 < nr && sum < target {
        sum += item_bytes(b, c);
        c += 1;
    }
    c
}

/// How many items from the back of `b` to move so that a block holding
/// `have` bytes reaches `target` bytes, leaving `b` at least one item.
pub(crate) fn tail_count_for(b: &[u8], have: usize, target: usize) -> usize {
    let nr = nr_items(b);
    let mut sum = have;
    let mut c = 0;
    while c + 1 < nr && sum < target {
        sum += item_bytes(b, nr - 1 - c);
        c += 1;
    }
    c
}

// ---------------------------------------------------------------------------
// Writers

fn set_counts(b: &mut [u8], nr: usize, total: usize, mid_free: usize) {
    debug_assert!(nr <= BTREE_MAX_ITEMS);
    debug_assert!(total <= BTREE_ITEM_SPACE);
    debug_assert!(btree_item_offset(nr) + mid_free <= BLOCK_LG_SIZE);
    let h = btree_block_mut(b);
    // All three fit u16: bounded by BTREE_ITEM_SPACE (checked at compile
    // time in format::btree).
    h.nr_items.set(nr as u16);
    h.total_item_bytes.set(total as u16);
    h.mid_free_len.set(mid_free as u16);
}

/// Make a freshly allocated block an empty btree block at `level`. The
/// block header (first 32 bytes) belongs to the block layer.
pub(crate) fn init(b: &mut [u8], level: u8) {
    assert!(level < BTREE_MAX_HEIGHT);
    set_counts(b, 0, 0, BTREE_ITEM_SPACE);
    let h = btree_block_mut(b);
    h.level = level;
    h._pad = [0; 9];
}

/// Whether `bytes` more item bytes fit in the block (after compaction).
pub(crate) fn fits(b: &[u8], bytes: usize) -> bool {
    total_bytes(b) + bytes <= BTREE_ITEM_SPACE
}

/// Write a value just below the value area; returns its offset (0 for an
/// empty value). The caller has made room in the gap and accounts for it.
fn place_value(b: &mut [u8], val: &[u8]) -> usize {
    if val.is_empty() {
        return 0;
    }
    let space = btree_val_space(val.len());
    let off = val_start(b) - space;
    debug_assert!(off >= btree_item_offset(nr_items(b)));
    b[off..off + val.len()].copy_from_slice(val);
    b[off + val.len()..off + space].fill(0);
    off
}

fn header(item: &NewItem<'_>, val_off: usize) -> BtreeItem {
    BtreeItem {
        key: item.key.to_disk(),
        seq: item.seq.into(),
        // Offsets are < BLOCK_LG_SIZE and lengths <= BTREE_MAX_VAL_LEN.
        val_off: (val_off as u16).into(),
        val_len: (item.val.len() as u16).into(),
        flags: item.flags,
        _pad: [0; 3],
    }
}

/// Pack every value against the end of the block, turning the holes left
/// by removed and shrunk values into gap. Values only move up (towards the
/// end), taken from the highest down, so none is overwritten before it
/// moves. Allocation free.
pub(crate) fn compact(b: &mut [u8]) {
    let nr = nr_items(b);
    let mut order = [0u16; BTREE_MAX_ITEMS];
    let mut m = 0;
    for (i, it) in items(b).iter().enumerate() {
        if it.val_len.get() > 0 {
            order[m] = i as u16;
            m += 1;
        }
    }
    let order = &mut order[..m];
    {
        let its = items(b);
        order.sort_unstable_by_key(|&i| Reverse(its[usize::from(i)].val_off.get()));
    }
    let mut cursor = BLOCK_LG_SIZE;
    for &i in order.iter() {
        let it = items(b)[usize::from(i)];
        let off = usize::from(it.val_off.get());
        let space = btree_val_space(usize::from(it.val_len.get()));
        let new = cursor - space;
        debug_assert!(new >= off, "compaction moves values up");
        if new != off {
            b.copy_within(off..off + space, new);
            btree_items_mut(b, nr)[usize::from(i)]
                .val_off
                .set(new as u16);
        }
        cursor = new;
    }
    let items_end = btree_item_offset(nr);
    assert!(cursor >= items_end, "values overlap item headers");
    let total = total_bytes(b);
    set_counts(b, nr, total, cursor - items_end);
    debug_assert_eq!(mid_free(b), BTREE_ITEM_SPACE - total);
}

/// Make at least `bytes` of gap, compacting if needed. The caller has
/// checked that the bytes fit.
fn make_room(b: &mut [u8], bytes: usize) {
    assert!(fits(b, bytes), "{bytes} bytes don't fit the block");
    if mid_free(b) < bytes {
        compact(b);
    }
    debug_assert!(mid_free(b) >= bytes);
}

/// Insert `item` as item `pos`, shifting the headers after it.
pub(crate) fn insert(b: &mut [u8], pos: usize, item: &NewItem<'_>) {
    let nr = nr_items(b);
    assert!(pos <= nr);
    debug_assert!(pos == 0 || key_at(b, pos - 1) < item.key);
    debug_assert!(pos == nr || item.key < key_at(b, pos));
    let bytes = item.bytes();
    make_room(b, bytes);
    let off = place_value(b, item.val);
    let start = btree_item_offset(pos);
    b.copy_within(start..btree_item_offset(nr), start + BTREE_ITEM_HDR_BYTES);
    btree_items_mut(b, nr + 1)[pos] = header(item, off);
    let (total, free) = (total_bytes(b), mid_free(b));
    set_counts(b, nr + 1, total + bytes, free - bytes);
}

/// Remove item `pos`. Its value becomes a hole unless it was the lowest
/// value, which goes straight back to the gap.
pub(crate) fn remove(b: &mut [u8], pos: usize) {
    let nr = nr_items(b);
    assert!(pos < nr);
    let it = items(b)[pos];
    let space = btree_val_space(usize::from(it.val_len.get()));
    let reclaim = space > 0 && usize::from(it.val_off.get()) == val_start(b);
    let start = btree_item_offset(pos);
    b.copy_within(start + BTREE_ITEM_HDR_BYTES..btree_item_offset(nr), start);
    let (total, mut free) = (total_bytes(b), mid_free(b) + BTREE_ITEM_HDR_BYTES);
    if reclaim {
        free += space;
    }
    set_counts(b, nr - 1, total - BTREE_ITEM_HDR_BYTES - space, free);
}

/// Give item `pos` a new seq, flags and value (its key stays).
pub(crate) fn replace(b: &mut [u8], pos: usize, seq: u64, flags: u8, val: &[u8]) {
    let nr = nr_items(b);
    assert!(pos < nr);
    let it = items(b)[pos];
    let old_off = usize::from(it.val_off.get());
    let old_space = btree_val_space(usize::from(it.val_len.get()));
    let new_space = btree_val_space(val.len());
    let mut total = total_bytes(b);
    let mut free = mid_free(b);
    assert!(total - old_space + new_space <= BTREE_ITEM_SPACE);
    let off = if new_space <= old_space && old_space > 0 && !val.is_empty() {
        // Fits where the old value was; any tail becomes a hole.
        b[old_off..old_off + val.len()].copy_from_slice(val);
        b[old_off + val.len()..old_off + new_space].fill(0);
        total -= old_space - new_space;
        set_counts(b, nr, total, free);
        old_off
    } else {
        // Let go of the old value, then place the new one below the gap.
        if old_space > 0 && old_off == val_start(b) {
            free += old_space;
        }
        total -= old_space;
        {
            let h = &mut btree_items_mut(b, nr)[pos];
            h.val_off.set(0);
            h.val_len.set(0);
        }
        set_counts(b, nr, total, free);
        make_room(b, new_space);
        let off = place_value(b, val);
        let (total, free) = (total_bytes(b), mid_free(b));
        set_counts(b, nr, total + new_space, free - new_space);
        off
    };
    let h = &mut btree_items_mut(b, nr)[pos];
    h.seq.set(seq);
    h.flags = flags;
    h.val_off.set(off as u16);
    h.val_len.set(val.len() as u16);
}

pub(crate) fn set_key(b: &mut [u8], pos: usize, key: &Key) {
    let nr = nr_items(b);
    debug_assert!(pos == 0 || key_at(b, pos - 1) < *key);
    debug_assert!(pos + 1 >= nr || *key < key_at(b, pos + 1));
    btree_items_mut(b, nr)[pos].key = key.to_disk();
}

/// Point parent item `pos` at `child` (and record the child's seq as the
/// item's seq).
pub(crate) fn set_child(b: &mut [u8], pos: usize, child: &BlockRef) {
    let nr = nr_items(b);
    let it = items(b)[pos];
    assert_eq!(usize::from(it.val_len.get()), BTREE_PARENT_VAL_LEN);
    let off = usize::from(it.val_off.get());
    b[off..off + BTREE_PARENT_VAL_LEN].copy_from_slice(bytemuck::bytes_of(child));
    btree_items_mut(b, nr)[pos].seq = child.seq;
}

/// Copy the headers and values of `src`'s items `range` to the end of `dst`
/// (their keys are all greater than `dst`'s).
pub(crate) fn append(dst: &mut [u8], src: &[u8], range: std::ops::Range<usize>) {
    let bytes = range_bytes(src, range.clone());
    let c = range.len();
    debug_assert!(
        nr_items(dst) == 0 || range.is_empty() || {
            let last = last_key(dst);
            last.is_some_and(|k| k < key_at(src, range.start))
        }
    );
    make_room(dst, bytes);
    let nr = nr_items(dst);
    copy_items(dst, nr, src, range);
    let (total, free) = (total_bytes(dst), mid_free(dst));
    set_counts(dst, nr + c, total + bytes, free - bytes);
}

/// Copy the headers and values of `src`'s items `range` to the front of
/// `dst` (their keys are all less than `dst`'s).
pub(crate) fn prepend(dst: &mut [u8], src: &[u8], range: std::ops::Range<usize>) {
    let bytes = range_bytes(src, range.clone());
    let c = range.len();
    debug_assert!(
        nr_items(dst) == 0 || range.is_empty() || {
            let last = src_last_key(src, &range);
            last < key_at(dst, 0)
        }
    );
    make_room(dst, bytes);
    let nr = nr_items(dst);
    dst.copy_within(
        btree_item_offset(0)..btree_item_offset(nr),
        btree_item_offset(c),
    );
    copy_items(dst, 0, src, range);
    let (total, free) = (total_bytes(dst), mid_free(dst));
    set_counts(dst, nr + c, total + bytes, free - bytes);
}

fn src_last_key(src: &[u8], range: &std::ops::Range<usize>) -> Key {
    key_at(src, range.end - 1)
}

/// Write `src`'s items `range` as `dst`'s headers from `at`, their values
/// below `dst`'s value area. Counts are the caller's to update; the gap
/// has room (`make_room`).
fn copy_items(dst: &mut [u8], at: usize, src: &[u8], range: std::ops::Range<usize>) {
    let mut vs = val_start(dst);
    for (k, it) in items(src)[range].iter().enumerate() {
        let len = usize::from(it.val_len.get());
        let space = btree_val_space(len);
        let off = if len == 0 {
            0
        } else {
            let soff = usize::from(it.val_off.get());
            vs -= space;
            dst[vs..vs + space].copy_from_slice(&src[soff..soff + space]);
            vs
        };
        let mut h = *it;
        h.val_off.set(off as u16);
        let pos = BTREE_BLOCK_HDR_BYTES + (at + k) * BTREE_ITEM_HDR_BYTES;
        dst[pos..pos + BTREE_ITEM_HDR_BYTES].copy_from_slice(bytemuck::bytes_of(&h));
    }
}

/// Drop items `n..` (their values become holes).
pub(crate) fn truncate(b: &mut [u8], n: usize) {
    let nr = nr_items(b);
    assert!(n <= nr);
    let bytes = range_bytes(b, n..nr);
    let (total, free) = (total_bytes(b), mid_free(b));
    set_counts(b, n, total - bytes, free + (nr - n) * BTREE_ITEM_HDR_BYTES);
}

/// Drop items `..c` (their values become holes).
pub(crate) fn remove_head(b: &mut [u8], c: usize) {
    let nr = nr_items(b);
    assert!(c <= nr);
    let bytes = range_bytes(b, 0..c);
    b.copy_within(
        btree_item_offset(c)..btree_item_offset(nr),
        btree_item_offset(0),
    );
    let (total, free) = (total_bytes(b), mid_free(b));
    set_counts(b, nr - c, total - bytes, free + c * BTREE_ITEM_HDR_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::btree::{check_btree_layout, BTREE_MAX_VAL_LEN};
    use crate::util::rng::SimRng;
    use std::collections::BTreeMap;

    fn block() -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_LG_SIZE];
        init(&mut b, 0);
        b
    }

    fn k(i: u64) -> Key {
        Key::new(16, i, 4, 0, 0, 0)
    }

    fn contents(b: &[u8]) -> Vec<(Key, u64, u8, Vec<u8>)> {
        (0..nr_items(b))
            .map(|i| {
                let it = items(b)[i];
                (
                    it.key(),
                    it.seq.get(),
                    it.flags,
                    value(b, i).unwrap().to_vec(),
                )
            })
            .collect()
    }

    fn model_contents(m: &BTreeMap<Key, (u64, Vec<u8>)>) -> Vec<(Key, u64, u8, Vec<u8>)> {
        m.iter().map(|(k, (s, v))| (*k, *s, 0, v.clone())).collect()
    }

    #[test]
    fn random_inserts_removes_and_replaces_keep_a_valid_block() {
        let mut rng = SimRng::new(3);
        let mut b = block();
        let mut m: BTreeMap<Key, (u64, Vec<u8>)> = BTreeMap::new();
        for step in 0..20_000u64 {
            let key = k(rng.below(400));
            let len = rng.below(BTREE_MAX_VAL_LEN as u64 + 1) as usize;
            let val = vec![(step % 251) as u8; len];
            match (search(&b, &key), rng.below(3)) {
                (Err(pos), _) => {
                    let item = NewItem {
                        key,
                        seq: step,
                        flags: 0,
                        val: &val,
                    };
                    if fits(&b, item.bytes()) {
                        insert(&mut b, pos, &item);
                        m.insert(key, (step, val));
                    }
                }
                (Ok(pos), 0) => {
                    remove(&mut b, pos);
                    m.remove(&key);
                }
                (Ok(pos), _) => {
                    let old = item_bytes(&b, pos);
                    if total_bytes(&b) - old + btree_item_bytes(len) <= BTREE_ITEM_SPACE {
                        replace(&mut b, pos, step, 0, &val);
                        m.insert(key, (step, val));
                    }
                }
            }
            check_btree_layout(&b, Some(0)).unwrap();
            if step % 1000 == 0 {
                assert_eq!(contents(&b), model_contents(&m));
            }
        }
        assert_eq!(contents(&b), model_contents(&m));
        compact(&mut b);
        check_btree_layout(&b, Some(0)).unwrap();
        assert_eq!(mid_free(&b), BTREE_ITEM_SPACE - total_bytes(&b));
        assert_eq!(contents(&b), model_contents(&m));
    }

    #[test]
    fn moving_items_between_blocks_keeps_both_valid() {
        let mut a = block();
        for i in 0..300u64 {
            let val = vec![i as u8; (i as usize * 7) % 200];
            let item = NewItem {
                key: k(i),
                seq: i,
                flags: 0,
                val: &val,
            };
            insert(&mut a, i as usize, &item);
        }
        let all = contents(&a);
        let s = split_point(&a);
        assert!(s > 0 && s < 300);
        let mut r = block();
        append(&mut r, &a.clone(), s..300);
        truncate(&mut a, s);
        check_btree_layout(&a, Some(0)).unwrap();
        check_btree_layout(&r, Some(0)).unwrap();
        let diff = total_bytes(&a).abs_diff(total_bytes(&r));
        assert!(diff < 2 * btree_item_bytes(200), "halves differ by {diff}");
        let mut joined = contents(&a);
        joined.extend(contents(&r));
        assert_eq!(joined, all);

        // Move some of a's tail to r's front, then some of r's head back.
        let c = tail_count_for(&a, total_bytes(&r), total_bytes(&r) + 3000);
        let n = nr_items(&a);
        prepend(&mut r, &a.clone(), n - c..n);
        truncate(&mut a, n - c);
        let c = head_count_for(&r, total_bytes(&a), total_bytes(&a) + 5000);
        append(&mut a, &r.clone(), 0..c);
        remove_head(&mut r, c);
        check_btree_layout(&a, Some(0)).unwrap();
        check_btree_layout(&r, Some(0)).unwrap();
        let mut joined = contents(&a);
        joined.extend(contents(&r));
        assert_eq!(joined, all);
    }

    #[test]
    fn header_check_bounds_what_readers_touch() {
        let mut b = block();
        assert_eq!(check_header(&b, 0), Ok(()));
        assert!(check_header(&b, 1).is_err());
        assert!(check_header(&b[..100], 0).is_err());
        btree_block_mut(&mut b).nr_items.set(2000);
        assert!(matches!(
            check_header(&b, 0),
            Err(BtreeLayoutProblem::TooManyItems { .. })
        ));
        let mut b = block();
        btree_block_mut(&mut b).mid_free_len.set(u16::MAX);
        assert!(matches!(
            check_header(&b, 0),
            Err(BtreeLayoutProblem::MidFree { .. })
        ));
    }
}
