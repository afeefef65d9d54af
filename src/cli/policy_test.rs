//! `postern policy test -f POLICY -t EXPECTATIONS`: a policy file checked against the
//! decisions it must make, with no data dir and no server (a pipeline's gate before
//! `apply`). Each failed expectation is printed with the rule that decided it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Deserialize;
use toml::Spanned;

use crate::config::LocatedError;
use crate::policy::{Decision, Policy, Request, decide, file};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check a policy file against expected decisions; exit 1 when any differs.
    Test(TestArgs),
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// The policy file (TOML), as `apply -f` takes it.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    file: PathBuf,
    /// The expectations (TOML): `[[expect]]` tables with `user`, `target`, `login` (or
    /// `database` and `db_user`) and `decision` (`allow` or `deny`).
    #[arg(short = 't', long = "tests", value_name = "EXPECTATIONS")]
    tests: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectations {
    #[serde(default)]
    expect: Vec<Spanned<Expect>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    user: String,
    target: String,
    login: Option<String>,
    database: Option<String>,
    db_user: Option<String>,
    decision: Want,
    /// Text the deciding rule (or the reason for a denial) must contain, e.g. `role
    /// \`dev\``.
    because: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Want {
    Allow,
    Deny,
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Test(a) = cmd;
    let src = read(&a.file)?;
    let doc = file::parse(&a.file, &src)?;
    let policy = file::merge(&Policy::default(), &doc, false);
    policy
        .validate()
        .with_context(|| format!("{} is not a valid policy", a.file.display()))?;
    let tests_src = read(&a.tests)?;
    let tests: Expectations = toml::from_str(&tests_src).map_err(|e| {
        LocatedError::new(
            &a.tests,
            &tests_src,
            e.span().map_or(0, |s| s.start),
            e.message().to_string(),
        )
    })?;
    if tests.expect.is_empty() {
        anyhow::bail!(
            "{} has no [[expect]] tables: nothing to check",
            a.tests.display()
        );
    }
    let mut failed = 0;
    for t in &tests.expect {
        match check(&policy, t.get_ref()) {
            Ok(line) => println!("ok    {line}"),
            Err(line) => {
                failed += 1;
                let at = LocatedError::new(&a.tests, &tests_src, t.span().start, String::new());
                println!("FAIL  {line}  ({}:{})", at.path, at.line);
            }
        }
    }
    let total = tests.expect.len();
    if failed > 0 {
        println!("{failed} of {total} expectation(s) failed");
        return Ok(ExitCode::from(1));
    }
    println!("all {total} expectation(s) hold");
    Ok(ExitCode::SUCCESS)
}

/// One expectation: `Ok` with what was decided when it holds, `Err` with why not.
fn check(policy: &Policy, t: &Expect) -> Result<String, String> {
    let request = match (&t.login, &t.database, &t.db_user) {
        (Some(login), None, None) => Request::Ssh { login },
        (None, Some(database), Some(db_user)) => Request::Postgres { database, db_user },
        _ => {
            return Err(format!(
                "{} → {}: give `login`, or `database` and `db_user`",
                t.user, t.target
            ));
        }
    };
    let what = format!("{} → {} on {}", t.user, request, t.target);
    let Some(user) = policy.users.get(&t.user) else {
        return Err(format!("{what}: the policy has no user `{}`", t.user));
    };
    let Some(target) = policy.targets.get(&t.target) else {
        return Err(format!("{what}: the policy has no target `{}`", t.target));
    };
    let decision = decide(user, &policy.roles_of(user), target, &request);
    let (got, because) = match &decision {
        Decision::Allow(g) => (Want::Allow, format!("allowed by {}", g.rule)),
        Decision::Deny(reason) => (Want::Deny, format!("denied: {reason}")),
    };
    let word = |w: Want| if w == Want::Allow { "allow" } else { "deny" };
    if got != t.decision {
        return Err(format!(
            "{what}: expected {}, got {} ({because})",
            word(t.decision),
            word(got)
        ));
    }
    if let Some(b) = &t.because
        && !because.contains(b.as_str())
    {
        return Err(format!(
            "{what}: {} as expected, but {because}, not by anything containing `{b}`",
            word(got)
        ));
    }
    Ok(format!("{what}: {} ({because})", word(got)))
}
