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
pub struct Names<T> {
    pub done: HashMap<Box<[u8]>, Arc<T>, RandomState>,
    ahead: HashMap<Box<[u8]>, Ahead<T>, RandomState>,
    pub bytes: usize,
}

impl<T: Weight> Names<T> {
    pub fn new() -> Self {
        Names {
            done: HashMap::default(),
            ahead: HashMap::default(),
            bytes: 0,
        }
    }

    /// What the name will mean once the messages sent so far are processed.
    pub fn lookup(&self, name: &[u8]) -> Option<Arc<T>> {
        match self.ahead.get(name) {
            Some((v, _)) => v.clone(),
            None => self.done.get(name).cloned(),
        }
    }

    pub fn len(&self) -> usize {
        self.done.len() + self.ahead.len()
    }

    /// A message in flight will set (or, with `None`, remove) the name.
    pub fn plan(&mut self, name: &[u8], v: Option<Arc<T>>) {
        self.bytes += v.as_ref().map_or(0, |v| v.weight());
        match self.ahead.get_mut(name) {
            Some(e) => {
                if let Some(old) = &e.0 {
                    self.bytes -= old.weight().min(self.bytes);
                }
                *e = (v, e.1 + 1);
            }
            None => {
                self.ahead.insert(name.into(), (v, 1));
            }
        }
    }

    /// The server answered a message that planned `name`: `Some(v)` when it took effect.
    pub fn settle(&mut self, name: &[u8], took: Option<Option<Arc<T>>>) {
        if let Some(v) = took {
            let old = match v {
                Some(v) => {
                    self.bytes += v.weight();
                    self.done.insert(name.into(), v)
                }
                None => self.done.remove(name),
            };
            if let Some(old) = old {
                self.bytes -= old.weight().min(self.bytes);
            }
        }
        if let Some(e) = self.ahead.get_mut(name) {
            e.1 -= 1;
            if e.1 == 0
                && let Some((Some(v), _)) = self.ahead.remove(name)
            {
                self.bytes -= v.weight().min(self.bytes);
            }
        }
    }

    /// The server dropped the unnamed entry.
    pub fn settle_unnamed_gone(&mut self) {
        if let Some(old) = self.done.remove(&b""[..]) {
            self.bytes -= old.weight().min(self.bytes);
        }
    }

    /// Forgets the named entries the server holds (the unnamed one stays).
    pub fn clear_named(&mut self) {
        let mut freed = 0;
        self.done.retain(|k, v| {
            let keep = k.is_empty();
            if !keep {
                freed += v.weight();
            }
            keep
        });
        self.bytes -= freed.min(self.bytes);
    }

    pub fn clear_done(&mut self) {
        for v in self.done.values() {
            self.bytes -= v.weight().min(self.bytes);
        }
        self.done.clear();
    }
}
