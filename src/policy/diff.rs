//! The difference between two policies, as the list of changes that turns one into the other.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::{Policy, Role, Target, User};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Entity {
    User(User),
    Role(Role),
    Target(Target),
}

impl Entity {
    pub fn kind(&self) -> &'static str {
        match self {
            Entity::User(_) => "user",
            Entity::Role(_) => "role",
            Entity::Target(_) => "target",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Entity::User(u) => &u.name,
            Entity::Role(r) => &r.name,
            Entity::Target(t) => &t.name,
        }
    }

    /// The entity as JSON fields, for audit details and change descriptions.
    pub fn fields(&self) -> BTreeMap<String, Value> {
        let v = match self {
            Entity::User(u) => serde_json::to_value(u),
            Entity::Role(r) => serde_json::to_value(r),
            Entity::Target(t) => serde_json::to_value(t),
        };
        match v {
            Ok(Value::Object(m)) => m.into_iter().collect(),
            _ => BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
// A handful per policy change: boxing would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    Create(Entity),
    Update { before: Entity, after: Entity },
    Delete(Entity),
}

impl Change {
    pub fn entity(&self) -> &Entity {
        match self {
            Change::Create(e) | Change::Delete(e) => e,
            Change::Update { after, .. } => after,
        }
    }

    /// `user.create`, `role.update`, `target.delete`: the audit event type.
    pub fn event_type(&self) -> String {
        let verb = match self {
            Change::Create(_) => "create",
            Change::Update { .. } => "update",
            Change::Delete(_) => "delete",
        };
        format!("{}.{}", self.entity().kind(), verb)
    }

    /// Field-by-field `before → after` for updates; the whole entity otherwise.
    pub fn details(&self) -> Value {
        match self {
            Change::Create(e) => serde_json::json!({ "after": e.fields() }),
            Change::Delete(e) => serde_json::json!({ "before": e.fields() }),
            Change::Update { before, after } => {
                let (b, a) = (before.fields(), after.fields());
                let mut changed = serde_json::Map::new();
                for (k, av) in &a {
                    let bv = b.get(k).unwrap_or(&Value::Null);
                    if bv != av {
                        changed.insert(k.clone(), serde_json::json!({ "before": bv, "after": av }));
                    }
                }
                for (k, bv) in &b {
                    if !a.contains_key(k) {
                        changed.insert(
                            k.clone(),
                            serde_json::json!({ "before": bv, "after": null }),
                        );
                    }
                }
                Value::Object(changed)
            }
        }
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.entity();
        match self {
            Change::Create(_) => write!(f, "+ {} {}", e.kind(), e.name()),
            Change::Delete(_) => write!(f, "- {} {}", e.kind(), e.name()),
            Change::Update { .. } => {
                write!(f, "~ {} {}:", e.kind(), e.name())?;
                if let Value::Object(m) = self.details() {
                    for (i, (k, v)) in m.iter().enumerate() {
                        let sep = if i == 0 { " " } else { "; " };
                        write!(
                            f,
                            "{sep}{k} {} → {}",
                            compact(&v["before"]),
                            compact(&v["after"])
                        )?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn diff_map<T: Clone + PartialEq>(
    before: &BTreeMap<String, T>,
    after: &BTreeMap<String, T>,
    wrap: fn(T) -> Entity,
    upserts: &mut Vec<Change>,
    deletes: &mut Vec<Change>,
) {
    for (name, a) in after {
        match before.get(name) {
            None => upserts.push(Change::Create(wrap(a.clone()))),
            Some(b) if b != a => upserts.push(Change::Update {
                before: wrap(b.clone()),
                after: wrap(a.clone()),
            }),
            Some(_) => {}
        }
    }
    for (name, b) in before {
        if !after.contains_key(name) {
            deletes.push(Change::Delete(wrap(b.clone())));
        }
    }
}

/// The changes from `before` to `after`, ordered so that every step keeps
/// references valid: roles are written before the users that hold them, and
/// users are removed before the roles they held.
pub fn diff(before: &Policy, after: &Policy) -> Vec<Change> {
    let (mut role_up, mut role_del) = (Vec::new(), Vec::new());
    let (mut target_up, mut target_del) = (Vec::new(), Vec::new());
    let (mut user_up, mut user_del) = (Vec::new(), Vec::new());
    diff_map(
        &before.roles,
        &after.roles,
        Entity::Role,
        &mut role_up,
        &mut role_del,
    );
    diff_map(
        &before.targets,
        &after.targets,
        Entity::Target,
        &mut target_up,
        &mut target_del,
    );
    diff_map(
        &before.users,
        &after.users,
        Entity::User,
        &mut user_up,
        &mut user_del,
    );
    let mut out = role_up;
    out.extend(target_up);
    out.extend(user_del);
    out.extend(user_up);
    out.extend(target_del);
    out.extend(role_del);
    out
}
