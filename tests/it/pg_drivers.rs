//! Python drivers through postern as they are used in real code: psycopg 3 (pipeline
//! mode, COPY, server-side cursors, notifications, `cancel_safe`, two-phase commit,
//! `options`) and asyncpg (prepared statements, cursors, `server_settings`, listeners,
//! pools). Each sees the target's backend PID and the plain database name, and the
//! transcript holds what each ran.

use serde_json::Value;

use crate::pg::{PgBastion, python};

fn find<'a>(t: &'a [Value], sql: &str) -> Vec<&'a Value> {
    t.iter()
        .filter(|l| l["type"] == "statement" && l["sql"] == sql)
        .collect()
}

#[test]
fn psycopg_and_asyncpg_see_a_real_server_and_every_statement_is_recorded() {
    let b = PgBastion::start();
    let port = b.postern.pg.port();
    let token = b.token();
    let ca = b.dev.home().join(".postern/ca.crt");
    let ca = ca.display();

    let psycopg = format!(
        r#"
import threading, time, psycopg
dsn = dict(host='127.0.0.1', port={port}, user='alice', password='{token}', dbname='features',
           sslmode='verify-full', sslrootcert='{ca}', options='-c statement_timeout=7000')
c = psycopg.connect(**dsn, autocommit=True)
print('dbname', c.info.dbname)
pid = c.execute('select pg_backend_pid()').fetchone()[0]
print('pid', pid == c.info.backend_pid)
print('timeout', c.execute('show statement_timeout').fetchone()[0])
c.execute('create table m (id int primary key, name text)')
with c.pipeline():
    c.execute('insert into m values (%s, %s)', (1, 'a'))
    c.execute('insert into m values (%s, %s)', (2, 'b'))
with c.cursor().copy('copy m from stdin') as cp:
    cp.write_row((3, 'c'))
    cp.write_row((4, 'd'))
with c.transaction():
    with c.cursor(name='cur') as cur:
        cur.itersize = 3
        cur.execute('select id from m order by id')
        print('cursor', [r[0] for r in cur])
c.execute('listen ch')
c.execute("notify ch, 'x'")
n = next(c.notifies(timeout=5, stop_after=1))
print('notify', n.pid == pid)
errors = []
def cancel():
    try:
        c.cancel_safe()
    except Exception as e:
        errors.append(repr(e))
threading.Timer(1.0, cancel).start()
try:
    c.execute('select pg_sleep(20)')
except psycopg.errors.QueryCanceled:
    print('cancelled', errors, psycopg.pq.version() >= 170000)
c2 = psycopg.connect(**dsn)
x = c2.xid(1, 'gtrid-1', 'bq')
c2.tpc_begin(x)
c2.execute("insert into m values (9, 'tpc')")
c2.tpc_prepare()
print('prepared', c.execute('select count(*) from pg_prepared_xacts where database = %s', (c.info.dbname,)).fetchone()[0])
c2.tpc_commit()
c2.close()
print('rows', c.execute('select count(*) from m').fetchone()[0])
c.close()
"#
    );
    let out = python(&psycopg);
    assert_eq!(
        out.ok(),
        "dbname features\npid True\ntimeout 7s\ncursor [1, 2, 3, 4]\nnotify True\ncancelled [] True\nprepared 1\nrows 5\n"
    );

    let asyncpg = format!(
        r#"
import asyncio, ssl, asyncpg
async def main():
    ctx = ssl.create_default_context(cafile='{ca}')
    kw = dict(host='127.0.0.1', port={port}, user='alice', password='{token}', database='pg1/features', ssl=ctx)
    conn = await asyncpg.connect(**kw, server_settings={{'jit': 'off', 'timezone': 'Asia/Tokyo'}})
    print('tz', await conn.fetchval('show timezone'))
    st = await conn.prepare('select id from m where id > $1 order by id')
    print('prepared', [r['id'] for r in await st.fetch(1)])
    async with conn.transaction():
        cur = await conn.cursor('select name from m order by id')
        print('cursor', [r['name'] for r in await cur.fetch(2)])
        print('fetchrow', (await conn.fetchrow('select count(*) from m'))[0])
    got = asyncio.get_running_loop().create_future()
    await conn.add_listener('ch2', lambda c, pid, ch, payload: got.set_result(pid))
    await conn.execute("notify ch2, 'y'")
    print('notify', await asyncio.wait_for(got, 5) == conn.get_server_pid())
    await conn.close()
    pool = await asyncpg.create_pool(**kw, min_size=2, max_size=2)
    print('pool', sum(await asyncio.gather(*[pool.fetchval('select $1::int', i) for i in range(10)])))
    await pool.close()
asyncio.run(main())
"#
    );
    let out = python(&asyncpg);
    assert_eq!(
        out.ok(),
        "tz Asia/Tokyo\nprepared [2, 3, 4, 9]\ncursor ['a', 'b']\nfetchrow 5\nnotify True\npool 45\n"
    );

    let t: Vec<Value> = b.sessions().iter().flat_map(|s| b.transcript(s)).collect();
    let inserts = find(&t, "insert into m values ($1, $2)");
    assert_eq!(inserts.len(), 2, "{t:#?}");
    // psycopg sends small integers in binary.
    assert_eq!(inserts[1]["params"], serde_json::json!(["\\x0002", "b"]));
    assert_eq!(inserts[1]["rows"], 1);
    assert_eq!(find(&t, "copy m from stdin")[0]["tag"], "COPY 2");
    let fetches: Vec<u64> = t
        .iter()
        .filter(|l| {
            l["sql"]
                .as_str()
                .is_some_and(|s| s.starts_with("FETCH FORWARD 3 FROM"))
        })
        .map(|l| l["rows"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(fetches, [3, 1], "{t:#?}");
    assert_eq!(find(&t, "select pg_sleep(20)")[0]["error"]["code"], "57014");
    assert!(
        t.iter().any(|l| l["sql"] == "PREPARE TRANSACTION 'gtrid-1'"
            || l["sql"]
                .as_str()
                .is_some_and(|s| s.starts_with("PREPARE TRANSACTION"))),
        "{t:#?}"
    );
    // asyncpg's cursor fetches from a suspended portal: the rows it returned.
    let cursor = find(&t, "select name from m order by id");
    assert_eq!(
        (cursor[0]["rows"].clone(), cursor[0]["completion"].clone()),
        (2.into(), "suspended".into()),
        "{cursor:?}"
    );
    assert_eq!(
        find(&t, "select id from m where id > $1 order by id")[0]["rows"],
        4
    );
    assert!(t.iter().all(|l| l["completion"] != "none seen"), "{t:#?}");
}

#[test]
fn startup_settings_that_would_change_the_login_are_refused_with_a_reason() {
    let b = PgBastion::start();
    let mut c = b.psql_command("service=pg1");
    c.env("PGOPTIONS", "-c role=postgres")
        .args(["-c", "select 1"]);
    let out: crate::harness::Out = c.output().unwrap().into();
    assert!(
        out.fails(2)
            .contains("postern does not pass the setting `role` at connect"),
        "{}",
        out.stderr
    );
    let mut c = b.psql_command("service=pg1");
    c.env("PGOPTIONS", "-c lock_timeout=3s")
        .env("PGTZ", "Europe/Paris")
        .args(["-c", "show lock_timeout", "-c", "show timezone"]);
    let out: crate::harness::Out = c.output().unwrap().into();
    assert_eq!(out.ok(), "3s\nEurope/Paris\n");
}
