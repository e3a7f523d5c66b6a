//! A vector with a free list: stable `u32` indices, freed slots reused before the vector grows.

use std::ops::{Index, IndexMut};

pub(crate) struct Slab<T> {
    items: Vec<T>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Default> Slab<T> {
    pub(crate) fn alloc(&mut self, value: T) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.items[index as usize] = value;
                index
            }
            None => {
                self.items.push(value);
                (self.items.len() - 1) as u32
            }
        }
    }

    /// Drops the value (resetting the slot) and makes the index available again.
    pub(crate) fn free(&mut self, index: u32) {
        self.items[index as usize] = T::default();
        self.free.push(index);
    }

    pub(crate) fn live(&self) -> usize {
        self.items.len() - self.free.len()
    }

    /// One more than the highest index ever handed out.
    pub(crate) fn high_water(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.free.shrink_to_fit();
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[T] {
        &self.items
    }
}

impl<T> Index<u32> for Slab<T> {
    type Output = T;

    #[inline]
    fn index(&self, index: u32) -> &T {
        &self.items[index as usize]
    }
}

impl<T> IndexMut<u32> for Slab<T> {
    #[inline]
    fn index_mut(&mut self, index: u32) -> &mut T {
        &mut self.items[index as usize]
    }
}
