//! A list inside the envelope that a guest can walk without an allocator.

use core::fmt;
use core::marker::PhantomData;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Zero or more `T`, each postcard-encoded, back to back, carried as one byte
/// string. On the wire it is a plain postcard byte string (varint length, then
/// the bytes), so a guest decodes items lazily from the event buffer and never
/// needs to know the count up front.
pub struct Seq<'a, T> {
    bytes: &'a [u8],
    _items: PhantomData<fn() -> T>,
}

impl<'a, T> Seq<'a, T> {
    /// Wraps bytes produced by [`Seq::encode`] (or by another language's encoder).
    pub const fn from_encoded(bytes: &'a [u8]) -> Self {
        Seq {
            bytes,
            _items: PhantomData,
        }
    }

    pub const fn empty() -> Self {
        Seq::from_encoded(&[])
    }

    pub const fn encoded(&self) -> &'a [u8] {
        self.bytes
    }

    pub const fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<'a, T: Deserialize<'a>> Seq<'a, T> {
    /// Items in order; an item that does not decode ends the walk with an error.
    pub fn iter(&self) -> SeqIter<'a, T> {
        SeqIter {
            rest: self.bytes,
            _items: PhantomData,
        }
    }

    /// Counts the items by decoding them all; `Err` if any is malformed.
    pub fn count(&self) -> Result<usize, postcard::Error> {
        let mut n = 0;
        for item in self.iter() {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(feature = "alloc")]
impl<T: Serialize> Seq<'_, T> {
    /// Encodes `items` into the byte string a `Seq` wraps.
    pub fn encode<'i, I>(items: I) -> Result<alloc::vec::Vec<u8>, postcard::Error>
    where
        I: IntoIterator<Item = &'i T>,
        T: 'i,
    {
        let mut out = alloc::vec::Vec::new();
        for item in items {
            out.extend_from_slice(&postcard::to_allocvec(item)?);
        }
        Ok(out)
    }
}

impl<T> Clone for Seq<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Seq<'_, T> {}

impl<T> PartialEq for Seq<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl<T> Eq for Seq<'_, T> {}

impl<T> Default for Seq<'_, T> {
    fn default() -> Self {
        Seq::empty()
    }
}

impl<T> fmt::Debug for Seq<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({} bytes)", self.bytes.len())
    }
}

impl<T> Serialize for Seq<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.bytes)
    }
}

impl<'de: 'a, 'a, T> Deserialize<'de> for Seq<'a, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(deserializer).map(Seq::from_encoded)
    }
}

/// Iterator over a [`Seq`].
pub struct SeqIter<'a, T> {
    rest: &'a [u8],
    _items: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for SeqIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeqIter({} bytes left)", self.rest.len())
    }
}

impl<'a, T: Deserialize<'a>> Iterator for SeqIter<'a, T> {
    type Item = Result<T, postcard::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match postcard::take_from_bytes::<T>(self.rest) {
            Ok((item, rest)) => {
                self.rest = rest;
                Some(Ok(item))
            }
            Err(e) => {
                // Stop after the first bad item: what follows cannot be framed.
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}
