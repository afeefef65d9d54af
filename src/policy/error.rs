//! Errors of the policy model: an admin asked for something the model does not allow.

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid {what} name `{name}`: {rule}")]
    BadName {
        what: &'static str,
        name: String,
        rule: &'static str,
    },
    #[error("invalid address `{address}`: {why}")]
    BadAddress { address: String, why: String },
    #[error("invalid SSH public key `{key}`: {why}")]
    BadKey { key: String, why: String },
    #[error("user `{user}` names role `{role}`, which does not exist; add the role first")]
    MissingRole { user: String, role: String },
    #[error(
        "key {fingerprint} already belongs to user `{user}`; a key identifies exactly one user"
    )]
    KeyInUse { fingerprint: String, user: String },
    #[error("{what} `{name}` not found")]
    NotFound { what: &'static str, name: String },
    #[error("{what} `{name}` already exists")]
    Exists { what: &'static str, name: String },
    #[error("role `{role}` is still granted to {users}; revoke it first")]
    RoleInUse { role: String, users: String },
    #[error("{0}")]
    Invalid(String),
}
