//! A slab with generations, so that a stale mio token never reaches the new owner of a reused slot.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub index: u32,
    pub gen: u32,
}

pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.0 = slot.0.wrapping_add(1);
            slot.1 = Some(value);
            return Key { index, gen: slot.0 };
        }
        self.slots.push((0, Some(value)));
        Key { index: (self.slots.len() - 1) as u32, gen: 0 }
    }

    pub fn get(&self, key: Key) -> Option<&T> {
        match self.slots.get(key.index as usize) {
            Some((gen, Some(v))) if *gen == key.gen => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.index as usize) {
            Some((gen, Some(v))) if *gen == key.gen => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, key: Key) -> Option<T> {
        match self.slots.get_mut(key.index as usize) {
            Some((gen, slot @ Some(_))) if *gen == key.gen => {
                self.len -= 1;
                self.free.push(key.index);
                slot.take()
            }
            _ => None,
        }
    }

    /// The live key at `index` whose generation's low 24 bits are `gen24` (as packed into a mio token).
    pub fn find(&self, index: u32, gen24: u32) -> Option<Key> {
        match self.slots.get(index as usize) {
            Some((gen, Some(_))) if gen & 0xff_ffff == gen24 => Some(Key { index, gen: *gen }),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn keys(&self) -> Vec<Key> {
        self.slots.iter().enumerate().filter(|(_, (_, v))| v.is_some()).map(|(i, (gen, _))| Key { index: i as u32, gen: *gen }).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, (gen, v))| v.as_ref().map(|v| (Key { index: i as u32, gen: *gen }, v)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, (gen, v))| v.as_mut().map(|v| (Key { index: i as u32, gen: *gen }, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_miss_after_reuse() {
        let mut s = Slab::default();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_eq!(a.index, b.index);
        assert!(s.get(a).is_none());
        assert_eq!(s.get(b), Some(&2));
        assert_eq!(s.len(), 1);
    }
}
