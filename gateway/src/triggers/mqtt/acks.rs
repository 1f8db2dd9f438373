//! Acknowledgements in arrival order.
//!
//! MQTT 3.1.1 (§4.6) requires a receiver to send PUBACKs in the order the
//! PUBLISHes arrived, and brokers enforce it (rumqttd drops the connection on
//! an out-of-order ack). Jobs finish out of order: shards run in parallel, a
//! failed invocation is settled at once while an earlier success waits for
//! its group commit. So each finished message is marked done here, and only
//! the leading run of done messages is released for acking.

use std::collections::VecDeque;

/// The messages of one connection, oldest first.
#[derive(Debug, Default)]
pub struct AckQueue {
    /// Sequence number of the front entry.
    front: u64,
    /// (packet id, done) per message still waiting to be acked.
    entries: VecDeque<(u16, bool)>,
}

impl AckQueue {
    /// Records a message that arrived; returns its ticket for [`AckQueue::done`].
    pub fn arrive(&mut self, pkid: u16) -> u64 {
        self.entries.push_back((pkid, false));
        self.front + self.entries.len() as u64 - 1
    }

    /// Marks `ticket` done; returns the packet ids that may now be acked, in order.
    pub fn done(&mut self, ticket: u64) -> Vec<u16> {
        let Some(index) = ticket.checked_sub(self.front) else {
            return Vec::new();
        };
        if let Some(entry) = self.entries.get_mut(index as usize) {
            entry.1 = true;
        }
        let mut ready = Vec::new();
        while self.entries.front().is_some_and(|(_, done)| *done) {
            if let Some((pkid, _)) = self.entries.pop_front() {
                ready.push(pkid);
            }
            self.front += 1;
        }
        ready
    }

    /// After a reconnect the broker redelivers whatever was not acked, so
    /// tickets from the old connection must release nothing on the new one.
    pub fn reset(&mut self) {
        self.front += self.entries.len() as u64;
        self.entries.clear();
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_wait_for_every_earlier_message() {
        let mut q = AckQueue::default();
        let a = q.arrive(1);
        let b = q.arrive(2);
        let c = q.arrive(3);
        assert_eq!(q.done(c), Vec::<u16>::new(), "3 waits for 1 and 2");
        assert_eq!(q.done(a), vec![1]);
        assert_eq!(q.done(b), vec![2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn tickets_from_before_a_reset_release_nothing() {
        let mut q = AckQueue::default();
        let old = q.arrive(7);
        q.reset();
        let new = q.arrive(7);
        assert_eq!(q.done(old), Vec::<u16>::new());
        assert_eq!(q.done(new), vec![7]);
    }

    #[test]
    fn a_ticket_done_twice_is_harmless() {
        let mut q = AckQueue::default();
        let a = q.arrive(1);
        assert_eq!(q.done(a), vec![1]);
        assert_eq!(q.done(a), Vec::<u16>::new());
    }
}
