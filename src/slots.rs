//! A bounded table of connections, for the control server and the Einhorn
//! command socket: each newcomer takes a free slot (its index makes its poll
//! token), and when the table is full the oldest connection is dropped, so
//! a flood of clients can neither grow sup's memory nor lock others out.

use std::collections::VecDeque;

pub struct Slots<T> {
    items: Vec<Option<T>>,
    /// Occupied slots, oldest first.
    order: VecDeque<usize>,
    max: usize,
}

impl<T> Slots<T> {
    pub fn new(max: usize) -> Slots<T> {
        Slots {
            items: Vec::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Store `item`, dropping the oldest when full; returns its slot.
    pub fn insert(&mut self, item: T) -> usize {
        if self.order.len() >= self.max
            && let Some(oldest) = self.order.pop_front()
        {
            self.items[oldest] = None;
        }
        let slot = match self.items.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.items.push(None);
                self.items.len() - 1
            }
        };
        self.items[slot] = Some(item);
        self.order.push_back(slot);
        slot
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.items.get_mut(slot)?.as_mut()
    }

    pub fn remove(&mut self, slot: usize) {
        if let Some(item) = self.items.get_mut(slot) {
            *item = None;
        }
        self.order.retain(|s| *s != slot);
    }

    /// One past the highest slot ever used.
    pub fn bound(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_free_slots_and_drops_the_oldest_when_full() {
        let mut s = Slots::new(2);
        assert_eq!((s.insert("a"), s.insert("b")), (0, 1));
        s.remove(0);
        assert_eq!(s.insert("c"), 0, "a free slot is reused");
        assert_eq!(s.insert("d"), 1, "full: the oldest (b, slot 1) made room");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), ["c", "d"]);
        assert_eq!(s.get_mut(1).copied(), Some("d"));
        assert_eq!(s.bound(), 2);
    }
}
