//! A real HTTP CONNECT proxy on loopback: Debian's tinyproxy from
//! `scripts/install-tinyproxy` (pinned, checksummed, unpacked under
//! `.tools/`), found or installed once per test binary; the script serialises
//! concurrent installs with a file lock.
//!
//! Each [`Tinyproxy`] runs in the foreground (`tinyproxy -d -c CONF`) as a
//! child process with its own temp dir (config, log, pid file, stderr), on a
//! free 127.0.0.1 port that it keeps across [`Tinyproxy::stop`] and
//! [`Tinyproxy::start_again`], and is killed on drop.
//!
//! What tinyproxy 1.11.1 does, as these tests rely on it:
//! - Without `ConnectPort` lines, CONNECT to any port is allowed.
//! - With `BasicAuth`, a request without `Proxy-Authorization` gets
//!   `407 Proxy Authentication Required`, but one with wrong credentials gets
//!   `401 Unauthorized` (1.11.1's quirk; later releases answer 407).
//! - Every request line is logged at level Connect, before the credentials
//!   are checked, as
//!   `CONNECT   Dec 05 05:24:49.720 [2613]: Request (file descriptor 5): CONNECT 127.0.0.1:23456 HTTP/1.1`,
//!   so [`Tinyproxy::connects`] lists every CONNECT the proxy was asked for,
//!   refused or not.
//! - The log is appended to across restarts.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::chart_tools::repo;
use super::free_addr;

/// How long [`Tinyproxy::start`] waits for the proxy to listen.
const START_WITHIN: Duration = Duration::from_secs(10);
/// The log line tinyproxy writes once it listens and accepts.
const ACCEPTING: &str = "Starting main loop. Accepting connections.";

/// The tinyproxy binary, installed (or found in the cache) once per test
/// binary by `scripts/install-tinyproxy`.
pub(crate) fn tinyproxy_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/install-tinyproxy"))
            .output()
            .expect("run scripts/install-tinyproxy");
        assert!(
            out.status.success(),
            "scripts/install-tinyproxy failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("utf-8 paths");
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("TINYPROXY="))
            .unwrap_or_else(|| panic!("install-tinyproxy printed no TINYPROXY=: {stdout}"))
            .into()
    })
}

#[derive(Clone, Debug)]
pub(crate) struct TinyproxyOptions {
    /// `BasicAuth user password`: the proxy then requires
    /// `Proxy-Authorization: Basic …`. tinyproxy's config accepts only
    /// `[-A-Za-z0-9._]+` for both (so they need no escaping in a URL).
    pub basic_auth: Option<(String, String)>,
    /// `Timeout`: how long a connection (a CONNECT tunnel included) may sit
    /// idle before tinyproxy closes it.
    pub idle_timeout: Duration,
    /// `MaxClients`: concurrent connections.
    pub max_clients: u32,
}

impl Default for TinyproxyOptions {
    fn default() -> Self {
        Self {
            basic_auth: None,
            idle_timeout: Duration::from_secs(300),
            max_clients: 100,
        }
    }
}

impl TinyproxyOptions {
    pub(crate) fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_string(), password.to_string()));
        self
    }
}

/// A running tinyproxy on 127.0.0.1 (see the module docs).
pub(crate) struct Tinyproxy {
    child: Option<Child>,
    port: u16,
    options: TinyproxyOptions,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// A proxy without authentication.
    pub(crate) fn start() -> Self {
        Self::start_with(TinyproxyOptions::default())
    }

    /// A proxy that requires these credentials.
    pub(crate) fn with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_with(TinyproxyOptions::default().basic_auth(user, password))
    }

    pub(crate) fn start_with(options: TinyproxyOptions) -> Self {
        if let Some((user, password)) = &options.basic_auth {
            let allowed = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            };
            assert!(
                allowed(user) && allowed(password),
                "tinyproxy's BasicAuth takes only [-A-Za-z0-9._]+ for the user and the password"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir for tinyproxy");
        let port = free_addr().port();
        let mut config = format!(
            "Port {port}\n\
             Listen 127.0.0.1\n\
             Allow 127.0.0.1\n\
             Timeout {timeout}\n\
             MaxClients {max_clients}\n\
             LogFile \"{log}\"\n\
             LogLevel Info\n\
             PidFile \"{pid}\"\n\
             DisableViaHeader Yes\n",
            timeout = options.idle_timeout.as_secs().max(1),
            max_clients = options.max_clients,
            log = dir.path().join("tinyproxy.log").display(),
            pid = dir.path().join("tinyproxy.pid").display(),
        );
        // No ConnectPort lines: CONNECT to any port is allowed.
        if let Some((user, password)) = &options.basic_auth {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::write(dir.path().join("tinyproxy.conf"), config).expect("write tinyproxy.conf");
        let mut proxy = Self {
            child: None,
            port,
            options,
            dir,
        };
        proxy.spawn();
        proxy
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "tinyproxy is already running");
        let started_before = self.log().matches(ACCEPTING).count();
        let output = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("output.log"))
            .expect("open tinyproxy's output file");
        let child = Command::new(tinyproxy_binary())
            .arg("-d")
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the output file"))
            .stderr(output)
            .spawn()
            .expect("spawn tinyproxy");
        self.child = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "tinyproxy on port {} exited at start ({status})\n{}",
                    self.port,
                    self.diagnostics()
                );
            }
            // Its own log says it listens (so the port is not someone
            // else's), and the port takes connections.
            if self.log().matches(ACCEPTING).count() > started_before
                && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "tinyproxy did not listen on {} within {START_WITHIN:?}\n{}",
                    self.addr(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn diagnostics(&self) -> String {
        let output =
            std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default();
        format!(
            "--- tinyproxy.conf ---\n{}--- tinyproxy.log ---\n{}--- stdout/stderr ---\n{output}",
            std::fs::read_to_string(self.config_path()).unwrap_or_default(),
            self.log()
        )
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`; panics without `basic_auth`.
    pub(crate) fn url_with_credentials(&self) -> String {
        let (user, password) = self.credentials().expect("this proxy has no basic_auth");
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The configured `(user, password)`, if any.
    pub(crate) fn credentials(&self) -> Option<(&str, &str)> {
        self.options
            .basic_auth
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The `Proxy-Authorization` header's value for the configured
    /// credentials (`Basic base64(user:password)`), if any.
    pub(crate) fn proxy_authorization(&self) -> Option<String> {
        self.credentials()
            .map(|(user, password)| basic_authorization(user, password))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn options(&self) -> &TinyproxyOptions {
        &self.options
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("tinyproxy.conf")
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("tinyproxy.log")
    }

    /// The log file's text so far (all runs: tinyproxy appends).
    pub(crate) fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log_path()) {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// The `host:port` of every CONNECT the proxy was asked for, in order,
    /// across restarts: refused ones (407, 401) too, since tinyproxy logs the
    /// request line before it checks the credentials. It logs before it
    /// answers, so a client that has read the response finds its CONNECT here.
    pub(crate) fn connects(&self) -> Vec<String> {
        parse_connects(&self.log())
    }

    /// Whether the process is running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the proxy and waits for it: connections to the port are refused
    /// until [`Tinyproxy::start_again`]. Open tunnels die with it.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the proxy again, on the same port with the same config.
    pub(crate) fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `Basic base64(user:password)`, a `Proxy-Authorization` value.
pub(crate) fn basic_authorization(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The CONNECT targets in a tinyproxy log: the `host:port` of each
/// `… Request (file descriptor N): CONNECT host:port HTTP/1.x` line.
pub(crate) fn parse_connects(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let (_, request) = line.split_once("]: Request (file descriptor ")?;
            let (_, request_line) = request.split_once("): ")?;
            let mut parts = request_line.split(' ');
            match (parts.next(), parts.next()) {
                (Some(method), Some(target)) if method.eq_ignore_ascii_case("CONNECT") => {
                    Some(target.to_string())
                }
                _ => None,
            }
        })
        .collect()
}
