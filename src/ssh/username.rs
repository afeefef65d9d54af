//! The SSH username names the target: `LOGIN@TARGET` (from `ssh LOGIN@TARGET@bastion`)
//! or `TARGET` alone for the default login. Identity never comes from it.

use crate::policy::names::{check_account_name, check_target_name};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `None`: use the default login of the allowing role.
    pub login: Option<String>,
    pub target: String,
}

/// Splits at the last `@`, as OpenSSH splits `user@host`.
pub fn parse(username: &str) -> Result<Destination, String> {
    let (login, target) = match username.rsplit_once('@') {
        Some((l, t)) => (Some(l), t),
        None => (None, username),
    };
    if check_target_name(target).is_err() {
        return Err(format!(
            "cannot read a target from the SSH username `{}`: connect as LOGIN@TARGET (ssh -p PORT LOGIN@TARGET@BASTION) or TARGET",
            printable(username)
        ));
    }
    if let Some(l) = login
        && (l == "*" || check_account_name("login", l).is_err())
    {
        return Err(format!(
            "`{}` is not a valid login name: connect as LOGIN@TARGET",
            printable(l)
        ));
    }
    Ok(Destination {
        login: login.map(str::to_string),
        target: target.to_string(),
    })
}

pub use crate::policy::names::printable;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(
            parse("root@gpu-1").unwrap(),
            Destination {
                login: Some("root".into()),
                target: "gpu-1".into()
            }
        );
        assert_eq!(
            parse("gpu-1").unwrap(),
            Destination {
                login: None,
                target: "gpu-1".into()
            }
        );
        assert!(
            parse("a@b@gpu-1")
                .unwrap_err()
                .contains("not a valid login")
        );
        for bad in [
            "",
            "root@",
            "@gpu-1",
            "root@GPU",
            "root@gpu_1",
            "*@gpu-1",
            "ro\u{1b}ot@gpu-1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(!parse("\u{1b}[31m").unwrap_err().contains('\u{1b}'));
    }
}
