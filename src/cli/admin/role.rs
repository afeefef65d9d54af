//! `postern admin role …`.

use std::process::ExitCode;

use super::{exists, load, mutate, not_found};
use crate::cli::output;
use crate::config::Config;
use crate::duration::Dur;
use crate::policy::names::{check_account_name, check_role_name};
use crate::policy::{ConsoleRight, PolicyError, Role, Rule, Selector};

#[derive(clap::Args)]
pub struct Settings {
    /// How long issued credentials live, e.g. 8h.
    #[arg(long)]
    credential_ttl: Option<Dur>,
    /// The longest a session may last, e.g. 2h.
    #[arg(long)]
    max_session_ttl: Option<Dur>,
    /// End a session after this long without input, e.g. 15m.
    #[arg(long)]
    idle_timeout: Option<Dur>,
    /// Allow `ssh -L` port forwarding.
    #[arg(long)]
    port_forwarding: Option<bool>,
    /// Allow sftp, scp and rsync.
    #[arg(long)]
    file_transfer: Option<bool>,
    /// Keep statement parameters out of PostgreSQL transcripts.
    #[arg(long)]
    redact_parameters: Option<bool>,
    /// Where port forwarding may go, HOST:PORT with `*` for any (comma-separated);
    /// `--forward-to ''` allows anywhere again.
    #[arg(long, value_delimiter = ',')]
    forward_to: Option<Vec<String>>,
    /// What members may do in the web console (comma-separated: audit, admin, review);
    /// `--console ''` takes it all away. Everyone sees their own sessions and targets.
    #[arg(long, value_delimiter = ',')]
    console: Option<Vec<ConsoleChoice>>,
    /// Who may request this role for a time: `user:NAME`, `role:NAME` or `*`
    /// (comma-separated); `--requestable-by ''` makes it not requestable.
    #[arg(long, value_delimiter = ',')]
    requestable_by: Option<Vec<String>>,
    /// Roles whose members approve or deny requests for this role (comma-separated).
    #[arg(long, value_delimiter = ',')]
    reviewers: Option<Vec<String>>,
    /// Approvals from different reviewers a request needs (2 for a two-person rule).
    #[arg(long)]
    approvals_required: Option<u8>,
    /// The longest a request may ask for, e.g. 4h.
    #[arg(long)]
    max_request_ttl: Option<Dur>,
    /// How long an undecided request stays pending, e.g. 24h.
    #[arg(long)]
    request_expiry: Option<Dur>,
}

/// A `--console` value: a right, or nothing (`''`).
#[derive(Clone)]
struct ConsoleChoice(Option<ConsoleRight>);

impl std::str::FromStr for ConsoleChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(ConsoleChoice(None));
        }
        <ConsoleRight as clap::ValueEnum>::from_str(s.trim(), true)
            .map(|r| ConsoleChoice(Some(r)))
            .map_err(|_| format!("`{s}` is not a console right: use audit, admin or review"))
    }
}

impl Settings {
    fn apply(self, role: &mut Role) {
        let s = &mut role.settings;
        if let Some(v) = self.credential_ttl {
            s.credential_ttl = v;
        }
        if let Some(v) = self.max_session_ttl {
            s.max_session_ttl = v;
        }
        if let Some(v) = self.idle_timeout {
            s.idle_timeout = v;
        }
        if let Some(v) = self.port_forwarding {
            s.port_forwarding = v;
        }
        if let Some(v) = self.file_transfer {
            s.file_transfer = v;
        }
        if let Some(v) = self.redact_parameters {
            s.redact_parameters = v;
        }
        if let Some(v) = self.forward_to {
            s.forward_to = v.into_iter().filter(|e| !e.is_empty()).collect();
        }
        if let Some(v) = self.console {
            s.console = v.into_iter().filter_map(|c| c.0).collect();
        }
        let listed = |v: Vec<String>| v.into_iter().filter(|e| !e.trim().is_empty()).collect();
        if let Some(v) = self.requestable_by {
            s.requestable_by = listed(v);
        }
        if let Some(v) = self.reviewers {
            s.reviewers = listed(v);
        }
        if let Some(v) = self.approvals_required {
            s.approvals_required = v;
        }
        if let Some(v) = self.max_request_ttl {
            s.max_request_ttl = v;
        }
        if let Some(v) = self.request_expiry {
            s.request_expiry = v;
        }
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add a role with allow (and deny) rules.
    Add {
        /// The new role's name.
        name: String,
        /// Targets this role allows, as a label selector (`env=dev`, `team in (a, b)`, `*`).
        #[arg(long, required_unless_present = "console")]
        allow: Vec<Selector>,
        /// Targets this role denies outright (beats every allow).
        #[arg(long)]
        deny: Vec<Selector>,
        /// Unix logins allowed on SSH targets (comma-separated).
        #[arg(long, value_delimiter = ',')]
        logins: Vec<String>,
        /// Databases allowed on PostgreSQL targets (comma-separated).
        #[arg(long, value_delimiter = ',')]
        databases: Vec<String>,
        /// Database users allowed on PostgreSQL targets (comma-separated).
        #[arg(long, value_delimiter = ',')]
        db_users: Vec<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// List roles with their allow and deny selectors and TTLs.
    List {
        /// Print the roles as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One role: its settings, numbered rules and the users it is granted to.
    Show {
        /// The role to show.
        name: String,
        /// Print the role as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a role that no user holds.
    Rm {
        /// The role to remove.
        name: String,
    },
    /// Change a role in place: its TTLs and switches, and its rules (added at the end,
    /// removed by the number `role show` prints).
    Set {
        /// The role to change.
        name: String,
        #[command(flatten)]
        settings: Settings,
        /// Add an allow rule for targets matching this selector, with --logins,
        /// --databases and --db-users (repeatable; each gets the same lists).
        #[arg(long, value_name = "SELECTOR")]
        add_allow: Vec<Selector>,
        /// Add a deny rule for targets matching this selector (repeatable).
        #[arg(long, value_name = "SELECTOR")]
        add_deny: Vec<Selector>,
        /// Unix logins of the allow rules added (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "add_allow")]
        logins: Vec<String>,
        /// Databases of the allow rules added (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "add_allow")]
        databases: Vec<String>,
        /// Database users of the allow rules added (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "add_allow")]
        db_users: Vec<String>,
        /// Remove a rule, named as `role show` and `access check` name it: allow#N or
        /// deny#N (repeatable; numbers as they were before this change).
        #[arg(long, value_name = "allow#N|deny#N", value_parser = parse_rule_ref)]
        remove_rule: Vec<RuleRef>,
    },
}

/// A rule of a role, as `role show` numbers it: `allow#2`, `deny#1`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleRef {
    deny: bool,
    n: usize,
}

fn parse_rule_ref(s: &str) -> Result<RuleRef, String> {
    let bad = || {
        format!(
            "`{s}` names no rule: write allow#N or deny#N, as `postern admin role show` numbers them"
        )
    };
    let (effect, n) = s.split_once('#').ok_or_else(bad)?;
    let n: usize = n.trim().parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
    match effect.trim() {
        "allow" => Ok(RuleRef { deny: false, n }),
        "deny" => Ok(RuleRef { deny: true, n }),
        _ => Err(bad()),
    }
}

/// Removes rules as `role show` numbers them.
fn remove_rules(r: &mut Role, refs: &[RuleRef]) -> Result<(), PolicyError> {
    let mut refs = refs.to_vec();
    refs.sort_unstable();
    refs.dedup();
    for x in &refs {
        let (effect, len) = if x.deny {
            ("deny", r.deny.len())
        } else {
            ("allow", r.allow.len())
        };
        if x.n > len {
            return Err(PolicyError::Invalid(format!(
                "role `{}` has no {effect}#{}: it has {len} {effect} rules (`postern admin role show {}`)",
                r.name, x.n, r.name
            )));
        }
    }
    // From the highest down, so the numbers still mean what they meant.
    for x in refs.into_iter().rev() {
        let rules = if x.deny { &mut r.deny } else { &mut r.allow };
        rules.remove(x.n - 1);
    }
    Ok(())
}

fn accounts(what: &'static str, list: &[String]) -> Result<(), PolicyError> {
    list.iter().try_for_each(|n| check_account_name(what, n))
}

pub async fn run(config: &Config, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Add {
            name,
            allow,
            deny,
            logins,
            databases,
            db_users,
            settings,
        } => {
            check_role_name(&name)?;
            accounts("login", &logins)?;
            accounts("database", &databases)?;
            accounts("database user", &db_users)?;
            let mut role = Role::new(&name);
            role.allow = allow
                .into_iter()
                .map(|targets| Rule {
                    targets,
                    logins: logins.clone(),
                    databases: databases.clone(),
                    db_users: db_users.clone(),
                })
                .collect();
            role.deny = deny
                .into_iter()
                .map(|targets| Rule {
                    targets,
                    logins: vec![],
                    databases: vec![],
                    db_users: vec![],
                })
                .collect();
            settings.apply(&mut role);
            mutate(config, |p| {
                if p.roles.contains_key(&name) {
                    return Err(exists("role", &name));
                }
                p.roles.insert(name, role);
                Ok(())
            })
            .await
        }
        Command::List { json } => {
            let p = load(config).await?;
            if json {
                output::json(&p.roles.values().collect::<Vec<_>>())?;
            } else {
                let rows: Vec<Vec<String>> = p
                    .roles
                    .values()
                    .map(|r| {
                        let sel = |rules: &[Rule]| {
                            output::list(
                                &rules
                                    .iter()
                                    .map(|x| format!("[{}]", x.targets))
                                    .collect::<Vec<_>>(),
                            )
                        };
                        vec![
                            r.name.clone(),
                            sel(&r.allow),
                            sel(&r.deny),
                            r.settings.credential_ttl.to_string(),
                            r.settings.max_session_ttl.to_string(),
                            r.settings.idle_timeout.to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "NAME",
                        "ALLOW",
                        "DENY",
                        "CREDENTIAL_TTL",
                        "MAX_SESSION_TTL",
                        "IDLE_TIMEOUT",
                    ],
                    &rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { name, json } => {
            let p = load(config).await?;
            let r = p.roles.get(&name).ok_or_else(|| not_found("role", &name))?;
            if json {
                output::json(r)?;
            } else {
                let s = &r.settings;
                println!("role             {}", r.name);
                println!("credential_ttl   {}", s.credential_ttl);
                println!("max_session_ttl  {}", s.max_session_ttl);
                println!("idle_timeout     {}", s.idle_timeout);
                println!("port_forwarding  {}", s.port_forwarding);
                println!("file_transfer    {}", s.file_transfer);
                println!("redact_parameters {}", s.redact_parameters);
                let anywhere = vec!["*:* (anywhere)".to_string()];
                let to = if s.forward_to.is_empty() {
                    &anywhere
                } else {
                    &s.forward_to
                };
                println!("forward_to       {}", output::list(to));
                let console: Vec<String> =
                    s.console.iter().map(|c| c.as_str().to_string()).collect();
                println!("console          {}", output::list(&console));
                if !s.requestable_by.is_empty() {
                    println!("requestable_by   {}", output::list(&s.requestable_by));
                    println!("reviewers        {}", output::list(&s.reviewers));
                    println!("approvals_required {}", s.approvals_required);
                    println!("max_request_ttl  {}", s.max_request_ttl);
                    println!("request_expiry   {}", s.request_expiry);
                }
                for (effect, rules) in [("allow", &r.allow), ("deny", &r.deny)] {
                    for (i, rule) in rules.iter().enumerate() {
                        println!(
                            "{effect} #{}  targets [{}] logins {} databases {} db_users {}",
                            i + 1,
                            rule.targets,
                            output::list(&rule.logins),
                            output::list(&rule.databases),
                            output::list(&rule.db_users)
                        );
                    }
                }
                let holders: Vec<String> = p
                    .users
                    .values()
                    .filter(|u| u.roles.contains(&name))
                    .map(|u| u.name.clone())
                    .collect();
                println!("granted to       {}", output::list(&holders));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { name } => {
            mutate(config, |p| {
                let holders: Vec<String> = p
                    .users
                    .values()
                    .filter(|u| u.roles.contains(&name))
                    .map(|u| u.name.clone())
                    .collect();
                if !holders.is_empty() {
                    return Err(PolicyError::RoleInUse {
                        role: name.clone(),
                        users: holders.join(", "),
                    });
                }
                p.roles
                    .remove(&name)
                    .map(|_| ())
                    .ok_or_else(|| not_found("role", &name))
            })
            .await
        }
        Command::Set {
            name,
            settings,
            add_allow,
            add_deny,
            logins,
            databases,
            db_users,
            remove_rule,
        } => {
            accounts("login", &logins)?;
            accounts("database", &databases)?;
            accounts("database user", &db_users)?;
            mutate(config, |p| {
                let r = p
                    .roles
                    .get_mut(&name)
                    .ok_or_else(|| not_found("role", &name))?;
                remove_rules(r, &remove_rule)?;
                r.allow.extend(add_allow.into_iter().map(|targets| Rule {
                    targets,
                    logins: logins.clone(),
                    databases: databases.clone(),
                    db_users: db_users.clone(),
                }));
                r.deny.extend(add_deny.into_iter().map(|targets| Rule {
                    targets,
                    logins: vec![],
                    databases: vec![],
                    db_users: vec![],
                }));
                settings.apply(r);
                if r.allow.is_empty() && r.settings.console.is_empty() {
                    return Err(PolicyError::Invalid(format!(
                        "role `{name}` would grant nothing: no allow rule and no console right; add one (--add-allow, --console) or remove the role"
                    )));
                }
                Ok(())
            })
            .await
        }
    }
}
