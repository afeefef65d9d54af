//! Prepared statements and portals as the tracker knows them: the text of each, decoded
//! once, and the names the server holds next to what messages in flight will make of them.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::quality::RandomState;

use crate::pg::text::Charset;

/// A statement's text, decoded once.
pub struct Sql {
    pub text: String,
    pub escaped: bool,
    /// The statement's whole length, when only a prefix was kept.
    pub cut: Option<usize>,
}

impl Sql {
    pub fn new(raw: &[u8], cs: Charset, cut: Option<usize>) -> Arc<Sql> {
        let (text, escaped) = cs.decode(raw);
        Arc::new(Sql {
            text: text.into_owned(),
            escaped,
            cut,
        })
    }
}

/// Bytes of text a value holds, for the session's budget.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for Sql {
    fn weight(&self) -> usize {
        self.text.len() + 32
    }
}

/// A bound portal: its statement (raw name, shown name, SQL) and parameters (JSON).
pub struct Portal {
    pub raw: Box<[u8]>,
    pub statement: String,
    pub sql: Option<Arc<Sql>>,
    pub params: Option<String>,
}

impl Weight for Portal {
    fn weight(&self) -> usize {
        self.statement.len() + self.params.as_ref().map_or(0, String::len) + 48
    }
}

/// What messages in flight will make of a name, and how many of them there are.
type Ahead<T> = (Option<Arc<T>>, u32);

/// Statement or portal names: what the server holds (`done`) and what messages in flight
/// will make of them if the server accepts them (`ahead`, with how many such messages).
/// Names are hashed several times per statement, so with foldhash rather than SipHash;
/// each map has its own random seed, and a session holds at most `MAX_NAMES` of each.
/// The unnamed entry, the one most drivers use for every statement, is kept apart from
/// the maps.
pub struct Names<T> {
    done: HashMap<Box<[u8]>, Arc<T>, RandomState>,
    ahead: HashMap<Box<[u8]>, Ahead<T>, RandomState>,
    unnamed_done: Option<Arc<T>>,
    unnamed_ahead: Option<Ahead<T>>,
    pub bytes: usize,
}

impl<T: Weight> Names<T> {
    pub fn new() -> Self {
        Names {
            done: HashMap::default(),
            ahead: HashMap::default(),
            unnamed_done: None,
            unnamed_ahead: None,
            bytes: 0,
        }
    }

    /// What the server holds under the name now.
    pub fn held(&self, name: &[u8]) -> Option<Arc<T>> {
        if name.is_empty() {
            self.unnamed_done.clone()
        } else {
            self.done.get(name).cloned()
        }
    }

    fn ahead(&self, name: &[u8]) -> Option<&Ahead<T>> {
        if name.is_empty() {
            self.unnamed_ahead.as_ref()
        } else {
            self.ahead.get(name)
        }
    }

    fn ahead_mut(&mut self, name: &[u8]) -> Option<&mut Ahead<T>> {
        if name.is_empty() {
            self.unnamed_ahead.as_mut()
        } else {
            self.ahead.get_mut(name)
        }
    }

    /// Sets (`Some`) or removes the name the server holds; returns what it held.
    fn hold(&mut self, name: &[u8], v: Option<Arc<T>>) -> Option<Arc<T>> {
        match (name.is_empty(), v) {
            (true, v) => std::mem::replace(&mut self.unnamed_done, v),
            (false, Some(v)) => self.done.insert(name.into(), v),
            (false, None) => self.done.remove(name),
        }
    }

    /// What the name will mean once the messages sent so far are processed.
    pub fn lookup(&self, name: &[u8]) -> Option<Arc<T>> {
        match self.ahead(name) {
            Some((v, _)) => v.clone(),
            None => self.held(name),
        }
    }

    pub fn len(&self) -> usize {
        self.done.len()
            + self.ahead.len()
            + usize::from(self.unnamed_done.is_some())
            + usize::from(self.unnamed_ahead.is_some())
    }

    /// A message in flight will set (or, with `None`, remove) the name.
    pub fn plan(&mut self, name: &[u8], v: Option<Arc<T>>) {
        self.bytes += v.as_ref().map_or(0, |v| v.weight());
        let freed = match self.ahead_mut(name) {
            Some(e) => {
                let old = std::mem::replace(&mut e.0, v);
                e.1 += 1;
                old.map_or(0, |o| o.weight())
            }
            None => {
                if name.is_empty() {
                    self.unnamed_ahead = Some((v, 1));
                } else {
                    self.ahead.insert(name.into(), (v, 1));
                }
                0
            }
        };
        self.bytes -= freed.min(self.bytes);
    }

    /// The server answered a message that planned `name`: `Some(v)` when it took effect.
    pub fn settle(&mut self, name: &[u8], took: Option<Option<Arc<T>>>) {
        if let Some(v) = took {
            self.bytes += v.as_ref().map_or(0, |v| v.weight());
            if let Some(old) = self.hold(name, v) {
                self.bytes -= old.weight().min(self.bytes);
            }
        }
        let last = match self.ahead_mut(name) {
            Some(e) => {
                e.1 -= 1;
                e.1 == 0
            }
            None => false,
        };
        if last {
            let gone = if name.is_empty() {
                self.unnamed_ahead.take()
            } else {
                self.ahead.remove(name)
            };
            if let Some((Some(v), _)) = gone {
                self.bytes -= v.weight().min(self.bytes);
            }
        }
    }

    /// The server dropped the unnamed entry.
    pub fn settle_unnamed_gone(&mut self) {
        if let Some(old) = self.unnamed_done.take() {
            self.bytes -= old.weight().min(self.bytes);
        }
    }

    /// Forgets the named entries the server holds (the unnamed one stays).
    pub fn clear_named(&mut self) {
        let freed: usize = self.done.values().map(|v| v.weight()).sum();
        self.done.clear();
        self.bytes -= freed.min(self.bytes);
    }

    pub fn clear_done(&mut self) {
        self.clear_named();
        self.settle_unnamed_gone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct W(usize);
    impl Weight for W {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn the_unnamed_entry_lives_apart_but_behaves_as_any_name() {
        let mut n = Names::<W>::new();
        for name in [&b""[..], b"s1"] {
            n.plan(name, Some(Arc::new(W(10))));
            assert_eq!(n.lookup(name).map(|w| w.0), Some(10));
            assert!(n.held(name).is_none());
            n.settle(name, Some(Some(Arc::new(W(10)))));
            assert_eq!(n.held(name).map(|w| w.0), Some(10));
        }
        assert_eq!((n.len(), n.bytes), (2, 20));
        // A second Parse of the unnamed statement in flight, then one that fails.
        n.plan(b"", Some(Arc::new(W(5))));
        n.plan(b"", Some(Arc::new(W(7))));
        assert_eq!(n.lookup(b"").map(|w| w.0), Some(7));
        n.settle(b"", None);
        assert_eq!(n.lookup(b"").map(|w| w.0), Some(7));
        n.settle(b"", Some(Some(Arc::new(W(7)))));
        assert_eq!(n.lookup(b"").map(|w| w.0), Some(7));
        assert_eq!((n.len(), n.bytes), (2, 17));
        // DEALLOCATE ALL keeps the unnamed statement; DISCARD ALL drops every one.
        n.clear_named();
        assert!(n.held(b"s1").is_none());
        assert_eq!((n.len(), n.bytes), (1, 7));
        n.clear_done();
        assert!(n.lookup(b"").is_none());
        assert_eq!((n.len(), n.bytes), (0, 0));
    }
}
