//! Transcript completeness, as a property: random interleavings of simple and extended
//! queries, errors, Syncs, COPY (with Sync inside, and failing) and endings (Terminate in
//! the same write, or the client vanishing) run against the real throwaway PostgreSQL with
//! `log_statement = all`. Every statement the server logged as executed appears in the
//! transcript with the same text; none the transcript calls skipped was executed.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::Value;

use crate::pg::PgBastion;
use crate::pg_wire::{Raw, bind, ended_transcript, execute, msg, parse, query, sync, terminate};

#[derive(Clone, Debug)]
enum Step {
    Simple {
        fail: bool,
    },
    Pipeline {
        n: u8,
        named: bool,
        fail_at: Option<u8>,
        sync: bool,
    },
    Copy {
        sync_inside: bool,
        fail: bool,
    },
    Sync,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<bool>().prop_map(|fail| Step::Simple { fail }),
        (
            1u8..4,
            any::<bool>(),
            proptest::option::of(0u8..4),
            prop::bool::weighted(0.8)
        )
            .prop_map(|(n, named, fail_at, sync)| Step::Pipeline {
                n,
                named,
                fail_at,
                sync
            }),
        (any::<bool>(), prop::bool::weighted(0.3))
            .prop_map(|(sync_inside, fail)| Step::Copy { sync_inside, fail }),
        Just(Step::Sync),
    ]
}

/// The bytes of a session's steps; statement markers are numbered from `next`.
fn program(steps: &[Step], next: &mut u32, case: u32) -> Vec<u8> {
    let mut w = Vec::new();
    let mut id = || {
        *next += 1;
        format!("c{case}m{next}")
    };
    for s in steps {
        match s {
            Step::Simple { fail } => {
                let m = id();
                let sql = if *fail {
                    format!("select 1/0 /*{m}*/")
                } else {
                    format!("insert into t values (1) /*{m}*/")
                };
                w.extend(query(&sql));
            }
            Step::Pipeline {
                n,
                named,
                fail_at,
                sync: end,
            } => {
                for i in 0..*n {
                    let m = id();
                    let sql = if *fail_at == Some(i) {
                        format!("select 1/0 /*{m}*/")
                    } else {
                        format!("select {i} /*{m}*/")
                    };
                    let name = if *named {
                        m.clone().into_bytes()
                    } else {
                        Vec::new()
                    };
                    w.extend(parse(&name, &sql));
                    w.extend(bind(b"", &name));
                    w.extend(execute(b""));
                }
                if *end {
                    w.extend(sync());
                }
            }
            Step::Copy { sync_inside, fail } => {
                let m = id();
                w.extend(query(&format!("copy t from stdin /*{m}*/")));
                // A Sync before the rows is ignored; one between rows ends the session.
                if *sync_inside {
                    w.extend(sync());
                }
                w.extend(msg(b'd', b"2\n"));
                if *fail {
                    w.extend(msg(b'f', b"client gave up\0"));
                } else {
                    w.extend(msg(b'c', b""));
                }
            }
            Step::Sync => w.extend(sync()),
        }
    }
    w.extend(sync());
    w
}

/// SQL the server logged as executed, by marker, from `log` (new lines only).
fn executed(log: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split_once("LOG:  ").map(|(_, r)| r) else {
            continue;
        };
        let sql = if let Some(s) = rest.strip_prefix("statement: ") {
            s
        } else if rest.starts_with("execute ") {
            match rest.split_once(": ") {
                Some((_, s)) => s,
                None => continue,
            }
        } else {
            continue;
        };
        if let Some(m) = marker(sql) {
            out.insert(m, sql.to_string());
        }
    }
    out
}

fn marker(sql: &str) -> Option<String> {
    let start = sql.find("/*c")? + 2;
    let end = sql[start..].find("*/")? + start;
    Some(sql[start..end].to_string())
}

#[test]
fn every_statement_the_server_executed_is_in_the_transcript_as_executed() {
    let b = PgBastion::start();
    b.psql(&["-c", "create table t (id int)"]).ok();
    b.pg.psql("alter system set log_statement = 'all'").ok();
    b.pg.psql("select pg_reload_conf()").ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let next = std::cell::Cell::new(0u32);
    let case = std::cell::Cell::new(0u32);
    let checked = std::cell::Cell::new(0usize);
    let mut config = ProptestConfig::with_cases(48);
    config.failure_persistence = None;
    proptest!(config, |(steps in proptest::collection::vec(step(), 1..8), vanish in prop::bool::weighted(0.3))| {
        case.set(case.get() + 1);
        let mut n = next.get();
        let log_from = b.pg.log().len();
        let before = b.sessions().len();
        let mut c = Raw::connect(&b, &[]);
        let mut w = program(&steps, &mut n, case.get());
        next.set(n);
        if !vanish {
            w.extend(terminate());
        }
        c.send(&w);
        if vanish {
            // Read a little, then vanish without a word.
            let _ = c.next();
        }
        drop(c);
        let t = ended_transcript(&b, before);
        let log = b.pg.log();
        let ran = executed(&log[log_from..]);
        let recorded: BTreeMap<String, &Value> = t
            .iter()
            .filter(|l| l["type"] == "statement")
            .filter_map(|l| Some((marker(l["sql"].as_str()?)?, l)))
            .collect();
        checked.set(checked.get() + ran.len());
        for (m, sql) in &ran {
            let Some(l) = recorded.get(m) else {
                panic!("{sql} ran but is not in the transcript: {t:#?}");
            };
            prop_assert_eq!(l["sql"].as_str(), Some(sql.as_str()), "{:?}", steps);
            let c = l["completion"].as_str().unwrap_or("");
            prop_assert!(!c.starts_with("skipped") && !c.starts_with("not executed"), "{sql} ran but the transcript says {c}");
        }
        for (m, l) in &recorded {
            if l.get("tag").is_some() {
                prop_assert!(ran.contains_key(m), "{l} has a tag but the server never ran it");
            }
        }
    });
    // The property saw statements run (the log is read as intended).
    assert!(checked.get() >= 20, "only {} statements ran", checked.get());
}
