//! A throwaway S3-compatible object store: moto's server (PyPI, installed by
//! script/bootstrap) over TLS with a CA of its own, on a free loopback port, stopped by PID
//! on drop. It checks every request's SigV4 signature against an IAM user's access key
//! made at start (the first three requests, which make that user, are the only ones it
//! lets through unsigned). Tests look into the bucket with boto3 (AWS's own Python
//! client), never with postern's: listing, reading, replacing and deleting objects.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, wait_for_port};

pub struct S3 {
    dir: TempDir,
    child: Child,
    log: PathBuf,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
}

impl S3 {
    pub fn start() -> S3 {
        let dir = tempfile::Builder::new()
            .prefix("s3-it")
            .tempdir()
            .expect("temp dir");
        super::postgres::make_certificates(dir.path());
        let log = dir.path().join("moto.log");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-c")
            .arg(dir.path().join("server.crt"))
            .arg("-k")
            .arg(dir.path().join("server.key"))
            // Requests after the first three must be signed by a known key.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            ))
            .spawn()
            .expect("python3 -m moto.server (script/bootstrap installs moto[server])");
        let mut s3 = S3 {
            dir,
            child,
            log,
            port,
            access_key: "unsigned".into(),
            secret_key: "unsigned".into(),
        };
        wait_for_port(port, Duration::from_secs(30), "moto", &s3.log);
        let made = s3.python(
            "iam",
            "c.create_user(UserName='postern')\nk = c.create_access_key(UserName='postern')['AccessKey']\nc.put_user_policy(UserName='postern', PolicyName='all', PolicyDocument='{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"*\",\"Resource\":\"*\"}]}')\nprint(k['AccessKeyId'], k['SecretAccessKey'])",
        );
        let mut words = made.split_whitespace();
        s3.access_key = words.next().expect("access key id").to_string();
        s3.secret_key = words.next().expect("secret key").to_string();
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `[recordings.s3]` section for `bucket`, uploading every second.
    pub fn config(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "[recordings.s3]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\nendpoint = \"{}\"\nca_file = \"{}\"\nflush = \"1s\"\n",
            self.endpoint(),
            self.ca_file().display()
        )
    }

    /// The environment postern reads credentials from.
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", &self.access_key),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
        ]
    }

    /// Runs `body` in Python with `s3` a boto3 client of this server; returns stdout.
    pub fn boto(&self, body: &str) -> String {
        self.python("s3", body)
    }

    /// Runs `body` in Python with `c` a boto3 client of `service` on this server.
    fn python(&self, service: &str, body: &str) -> String {
        let script = format!(
            "import boto3, sys\nc = boto3.client('{service}', endpoint_url='{}', verify='{}', aws_access_key_id='{}', aws_secret_access_key='{}', region_name='us-east-1')\ns3 = c\n{body}\n",
            self.endpoint(),
            self.ca_file().display(),
            self.access_key,
            self.secret_key
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "boto3 script failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.boto(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }

    /// Every object name in `bucket` under `prefix`, sorted. (The prefix is matched here:
    /// moto miscomputes the signature of a listing whose prefix holds a `/`.)
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.boto(&format!(
            "p = s3.get_paginator('list_objects_v2')\nfor page in p.paginate(Bucket='{bucket}'):\n    for o in page.get('Contents', []):\n        if o['Key'].startswith('{prefix}'):\n            print(o['Key'])"
        ));
        let mut keys: Vec<String> = out.lines().map(str::to_string).collect();
        keys.sort();
        keys
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self.boto(&format!(
            "sys.stdout.buffer.write(s3.get_object(Bucket='{bucket}', Key='{key}')['Body'].read())"
        ));
        out.into_bytes()
    }

    /// Replaces an object's content with `text`.
    pub fn put(&self, bucket: &str, key: &str, text: &str) {
        self.boto(&format!(
            "s3.put_object(Bucket='{bucket}', Key='{key}', Body={text:?}.encode())"
        ));
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.boto(&format!("s3.delete_object(Bucket='{bucket}', Key='{key}')"));
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        super::stop_pid(
            self.child.id() as i32,
            libc::SIGTERM,
            Duration::from_secs(5),
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
