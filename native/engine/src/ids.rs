//! Connection ids handed to Python: a slab slot and that slot's generation.
//!
//! `id = generation << 32 | slot`. A slot's generation grows each time the slot is
//! freed, so an id Python still holds for a connection that is gone never names the
//! connection that took its slot: commands for it are ignored (and counted).

/// The id Python knows a connection by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

impl ConnId {
    pub fn new(slot: usize, generation: u32) -> ConnId {
        ConnId(((generation as u64) << 32) | (slot as u64 & 0xffff_ffff))
    }

    pub fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The current generation of every slot the slab ever used.
#[derive(Debug, Default)]
pub struct Generations {
    by_slot: Vec<u32>,
}

impl Generations {
    /// The id of the connection now in `slot`.
    pub fn id(&mut self, slot: usize) -> ConnId {
        if slot >= self.by_slot.len() {
            self.by_slot.resize(slot + 1, 0);
        }
        ConnId::new(slot, self.by_slot[slot])
    }

    /// `slot` was freed: ids of its past connection no longer match.
    pub fn retire(&mut self, slot: usize) {
        if let Some(generation) = self.by_slot.get_mut(slot) {
            *generation = generation.wrapping_add(1);
        }
    }

    /// True if `id` names the connection now in its slot.
    pub fn is_current(&self, id: ConnId) -> bool {
        self.by_slot.get(id.slot()) == Some(&id.generation())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_and_generation_round_trip() {
        let id = ConnId::new(123_456, 7);
        assert_eq!(id.slot(), 123_456);
        assert_eq!(id.generation(), 7);
        assert_eq!(id.0, (7u64 << 32) | 123_456);
    }

    #[test]
    fn a_reused_slot_gets_a_new_id() {
        let mut generations = Generations::default();
        let first = generations.id(3);
        assert!(generations.is_current(first));
        generations.retire(3);
        assert!(!generations.is_current(first));
        let second = generations.id(3);
        assert_ne!(first, second);
        assert_eq!(first.slot(), second.slot());
        assert!(generations.is_current(second));
    }

    #[test]
    fn unknown_slots_are_not_current() {
        let generations = Generations::default();
        assert!(!generations.is_current(ConnId::new(0, 0)));
        assert!(!generations.is_current(ConnId(u64::MAX)));
    }

    #[test]
    fn generations_wrap_without_panicking() {
        let mut generations = Generations::default();
        generations.id(0);
        generations.by_slot[0] = u32::MAX;
        generations.retire(0);
        assert_eq!(generations.id(0).generation(), 0);
    }
}
