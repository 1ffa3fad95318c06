//! Acknowledging the deliveries of one transaction with one `basic.ack`.
//!
//! A worker handles deliveries that were ready together in one transaction
//! and then acknowledges all of them. One frame per delivery is work for
//! the broker's channel process and a settle command for the quorum queue
//! each; `basic.ack` with `multiple = true` acknowledges every delivery of
//! the channel up to a tag in one.
//!
//! That is only safe when no other delivery of the channel at or below the
//! tag is still unsettled: it would be acknowledged before its handler
//! committed (a loss), and its own settlement later would be an unknown tag,
//! which closes the channel. So each consuming channel keeps the set of its
//! unsettled delivery tags: a tag enters when the delivery is handed to the
//! worker and leaves only after its acknowledgement (or requeue) was sent,
//! and a batch covers with one frame only its tags below every other
//! unsettled one. The rest of the batch is acknowledged one by one, at
//! once: nothing waits for another batch, so one slow delivery never holds
//! the acknowledgements (and prefetch credit) of others.
//!
//! A delivery dropped without being settled (a shutdown timeout) keeps its
//! tag in the set, so no `multiple` acknowledgement ever covers it; the
//! broker delivers it again once the channel closes.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

/// The tags of one channel's deliveries that are not settled yet.
#[derive(Debug, Default)]
pub(crate) struct UnsettledTags {
    tags: Mutex<BTreeSet<u64>>,
}

impl UnsettledTags {
    /// A delivery was handed to the worker.
    pub(crate) fn delivered(&self, tag: u64) {
        self.lock().insert(tag);
    }

    /// Its acknowledgement or requeue has been sent: later `multiple`
    /// acknowledgements may cover it (the broker ignores a tag it already
    /// settled, and frames leave the channel in order).
    pub(crate) fn settled(&self, tags: &[u64]) {
        let mut unsettled = self.lock();
        for tag in tags {
            unsettled.remove(tag);
        }
    }

    /// Of `batch` (ascending, all unsettled), how many from the start one
    /// `multiple` acknowledgement at the last of them may cover: those below
    /// every unsettled tag outside the batch.
    pub(crate) fn coverable(&self, batch: &[u64]) -> usize {
        let unsettled = self.lock();
        let lowest_other = unsettled
            .iter()
            .find(|tag| batch.binary_search(tag).is_err());
        match lowest_other {
            None => batch.len(),
            Some(&lowest) => batch.partition_point(|&tag| tag < lowest),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // The set is consistent after every statement that changes it, so
        // a panic elsewhere while it was held leaves nothing half done.
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(tags: &[u64]) -> UnsettledTags {
        let tracker = UnsettledTags::default();
        for &tag in tags {
            tracker.delivered(tag);
        }
        tracker
    }

    #[test]
    fn a_batch_holding_the_oldest_deliveries_is_covered_whole() {
        let unsettled = tracker(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(unsettled.coverable(&[1, 2, 3]), 3);
    }

    #[test]
    fn a_batch_behind_an_unsettled_delivery_is_not_covered() {
        let unsettled = tracker(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(unsettled.coverable(&[4, 5, 6]), 0);
    }

    #[test]
    fn only_the_part_below_another_unsettled_delivery_is_covered() {
        // 3 belongs to another batch (or a retry still publishing).
        let unsettled = tracker(&[1, 2, 3, 4, 5]);
        assert_eq!(unsettled.coverable(&[1, 2, 4, 5]), 2);
    }

    #[test]
    fn settled_tags_no_longer_hold_a_batch_back() {
        let unsettled = tracker(&[1, 2, 3, 4]);
        unsettled.settled(&[1, 2]);
        assert_eq!(unsettled.coverable(&[3, 4]), 2);
    }

    #[test]
    fn a_tag_whose_settlement_is_under_way_still_holds_a_batch_back() {
        // Its single ack is being sent: it leaves the set only after that.
        let unsettled = tracker(&[7, 8, 9]);
        assert_eq!(unsettled.coverable(&[8, 9]), 0);
    }
}
