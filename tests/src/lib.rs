//! The end-to-end harness: starts real `cloudcore`, `edgecore` and `mosquitto` processes on
//! loopback ports and temp dirs, and waits on conditions with deadlines (never fixed sleeps).
//! Everything it starts is killed when the handle drops, including the pods' processes, which
//! outlive edgecore by design.

pub mod containerd;
pub mod flood;
pub mod loopback;
pub mod measure;
pub mod mqtt;
pub mod netns;
pub mod podnet;
pub mod svc;

pub use mqtt::Mosquitto;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// Directory holding the `cloudcore` and `edgecore` binaries: `$SKERRY_BIN_DIR`, or the cargo
/// target dir this test binary was built in.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SKERRY_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Runs the real kubectl with `kubeconfig`; returns (success, stdout + stderr).
pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .context("cannot run kubectl (it is expected at /usr/bin/kubectl)")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The condition of `kind` in an object's `status.conditions`.
pub fn condition_of<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A QUIC client that trusts the cloud's CA (`ca_path`), presents no certificate and speaks
/// `alpn`: what an anonymous stranger can open on the hub.
pub fn anonymous_client_config(ca_path: &Path, alpn: &[u8]) -> Result<quinn::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let ca = std::fs::read(ca_path)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(&ca)?)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

/// The path of a workspace binary, or an error saying how to build it.
pub fn bin(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!("{} is missing: run `cargo build --workspace --bins` before the end-to-end tests (deploy/test.sh does)", p.display());
    }
    Ok(p)
}

/// A temp dir for a daemon; with `SKERRY_KEEP_DIRS=1` it (and its logs) outlive the run, for
/// post-mortems of failed tests and benchmark traces.
fn temp_dir(prefix: &str) -> Result<TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    if std::env::var_os("SKERRY_KEEP_DIRS").is_some() {
        b.disable_cleanup(true);
    }
    let dir = b.tempdir()?;
    make_private(dir.path())?;
    Ok(dir)
}

/// Mode 0700: the daemons refuse a data directory that others may enter.
fn make_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A temp dir of mode 0700, fit to be a daemon's `--data-dir`.
pub fn private_temp_dir() -> Result<TempDir> {
    let dir = tempfile::tempdir()?;
    make_private(dir.path())?;
    Ok(dir)
}

/// Ports handed to daemons come from below the kernel's ephemeral range (32768 and up on
/// Linux): a port from that range, freed when a test kills a daemon to restart it, can be taken
/// meanwhile by any outgoing connection of a parallel test, and the restarted daemon then cannot
/// listen. Ports here are only ever taken by explicit binds.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

fn pick_port(free: impl Fn(u16) -> bool) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    // Ports handed out by this process: a port picked for a daemon is only bound when the
    // daemon starts, so until then it still looks free, and two picks (a cloud's API and broker
    // ports) once drew the same one.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for attempt in 0u32..10_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        h.write_u32(std::process::id());
        let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
        let port = PORT_RANGE.start + (h.finish() % span) as u16;
        if !given.contains(&port) && free(port) {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?}")
}

/// A free TCP port on loopback.
pub fn free_tcp_port() -> u16 {
    pick_port(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    pick_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// Polls `f` until it returns `Some`, or fails after `deadline` with `what` and the last value.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut last_err = String::new();
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what} {last_err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(child: &mut Child, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status();
}

pub(crate) fn stop_child(child: &mut Option<Child>, signal: i32) {
    if let Some(mut c) = child.take() {
        kill(&mut c, signal);
        let end = std::time::SystemTime::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            if std::time::SystemTime::now() > end {
                let _ = c.kill();
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Options for a cloud.
#[derive(Debug, Clone, Default)]
pub struct CloudOptions {
    /// Use an external mosquitto (set up by `cloudcore mqtt-config`) instead of the embedded
    /// broker.
    pub mosquitto: bool,
    /// `--watch-history`: store events kept for resuming watches (cloudcore's default if unset).
    pub watch_history: Option<usize>,
    /// `--node-monitor-grace-period` in seconds: how long a silent node stays Ready (cloudcore's
    /// default of 40 s if unset). Setting it also makes the controller's periodic pass run every
    /// second (`--node-monitor-period 1`).
    pub node_monitor_grace_period_secs: Option<u64>,
    /// More `cloudcore serve` flags, e.g. the connection caps and timeouts.
    pub extra_args: Vec<String>,
    /// `--idle-timeout-secs` of the hub (4 s, for quick tests, if unset).
    pub idle_timeout_secs: Option<u64>,
    /// Start cloudcore with this open file limit (soft and hard, through `prlimit`), to see
    /// it live within few descriptors.
    pub nofile_limit: Option<u64>,
    /// Run cloudcore inside a network namespace of a [`netns::Net`], serving on its address
    /// (loopback of the test's own namespace if unset).
    pub place: Option<netns::Place>,
    /// `--service-node-port-range` of 10 ports that only this cloud hands out
    /// ([`Cloud::node_port_range`]): for tests whose edges program node ports into the
    /// machine's tables, where another test's edge would answer the same port.
    pub own_node_ports: bool,
}

/// A running (or stopped) cloudcore.
pub struct Cloud {
    /// Data dir.
    pub dir: TempDir,
    child: Option<Child>,
    /// API port.
    pub api_port: u16,
    /// Hub port (UDP).
    pub hub_port: u16,
    /// MQTT port (embedded or external).
    pub mqtt_port: u16,
    /// The external broker, when [`CloudOptions::mosquitto`] asked for one.
    pub mosquitto: Option<Mosquitto>,
    opts: CloudOptions,
    http: Option<reqwest::Client>,
    /// The address cloudcore serves on (`127.0.0.1`, or its namespace's address).
    pub ip: String,
    /// This cloud's Service CIDR (`--service-cluster-ip-range`), a /24 of 10.96.0.0/12 of its
    /// own: edges program cluster IPs into the machine's tables, so two tests' clouds must
    /// never hand out the same one.
    pub service_cidr: String,
    /// This cloud's cluster CIDR (`--cluster-cidr`, /24s per node), a /20 of 10.112.0.0/12 of
    /// its own, for the same reason (edges given `--cni-conf-dir` route their pods from it).
    pub cluster_cidr: String,
    /// This cloud's node port range with [`CloudOptions::own_node_ports`]: 10 ports of
    /// 30000-32767 of its own.
    pub node_port_range: String,
    _slot: CloudSlot,
}

/// Where test clouds claim their address slots.
const CLOUD_SLOT_DIR: &str = "/run/skerry-clouds";

/// A test cloud's claim on slot N of 256: Service CIDR `10.96.N.0/24` and cluster CIDR `10.(112+N/16).((N%16)*16).0/20`, so
/// concurrent tests' clouds never hand out the same cluster IP or pod address (their edges
/// program them into the machine's tables). The claim is a lock file holding our pid; a
/// dead owner's slot is taken over.
pub struct CloudSlot {
    lock: PathBuf,
    /// The slot number.
    pub slot: u16,
}

impl CloudSlot {
    fn claim() -> Result<Self> {
        std::fs::create_dir_all(CLOUD_SLOT_DIR)?;
        let start = (std::process::id() as u16).wrapping_mul(31) % 256;
        for i in 0..256u16 {
            let slot = (start + i) % 256;
            let lock = PathBuf::from(format!("{CLOUD_SLOT_DIR}/{slot}.lock"));
            if let Ok(text) = std::fs::read_to_string(&lock) {
                let owner: u32 = text.trim().parse().unwrap_or(0);
                if owner > 0 && Path::new(&format!("/proc/{owner}")).exists() {
                    continue;
                }
                let _ = std::fs::remove_file(&lock);
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    write!(f, "{}", std::process::id())?;
                    return Ok(Self { lock, slot });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        bail!("no free test cloud slot in {CLOUD_SLOT_DIR} (all 256 held by live runs)")
    }

    fn service_cidr(&self) -> String {
        format!("10.96.{}.0/24", self.slot)
    }

    fn node_port_range(&self) -> String {
        let first = 30000 + self.slot * 10;
        format!("{first}-{}", first + 9)
    }

    fn cluster_cidr(&self) -> String {
        format!("10.{}.{}.0/20", 112 + self.slot / 16, (self.slot % 16) * 16)
    }
}

impl Drop for CloudSlot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

impl Cloud {
    /// Starts a cloud on a host of its own on `net` (named `cloud`), reachable from the test
    /// process through the observer link; `opts.place` is set here.
    pub async fn start_on(net: &netns::Net, opts: CloudOptions) -> Result<(netns::Host, Self)> {
        let host = net.host("cloud")?;
        let mut place = host.place();
        place.server_names.push(net.observer_ip().to_string());
        let cloud = Self::start(CloudOptions {
            place: Some(place),
            ..opts
        })
        .await?;
        Ok((host, cloud))
    }

    /// Starts a cloudcore with fresh ports and data dir and waits until its API answers.
    pub async fn start(opts: CloudOptions) -> Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ip = opts
            .place
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |p| p.ip.to_string());
        let slot = CloudSlot::claim()?;
        let mut cloud = Cloud {
            ip,
            dir: temp_dir("skerry-cloud-")?,
            child: None,
            api_port: free_tcp_port(),
            hub_port: free_udp_port(),
            mqtt_port: free_tcp_port(),
            mosquitto: None,
            opts,
            http: None,
            service_cidr: slot.service_cidr(),
            cluster_cidr: slot.cluster_cidr(),
            node_port_range: slot.node_port_range(),
            _slot: slot,
        };
        if cloud.opts.mosquitto {
            let broker = Mosquitto::start_for(cloud.dir.path()).await?;
            cloud.mqtt_port = broker.port;
            cloud.mosquitto = Some(broker);
        }
        cloud.launch().await?;
        Ok(cloud)
    }

    /// The hub address edges join.
    pub fn hub_addr(&self) -> String {
        format!("{}:{}", self.ip, self.hub_port)
    }

    /// The broker URL edges publish to.
    pub fn mqtt_url(&self) -> String {
        format!("mqtts://{}:{}", self.ip, self.mqtt_port)
    }

    /// The API base URL.
    pub fn api_url(&self) -> String {
        format!("https://{}:{}", self.ip, self.api_port)
    }

    /// Path of the cluster CA.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("pki/ca.crt")
    }

    /// (Re)starts the process on the same ports and data dir.
    pub async fn launch(&mut self) -> Result<()> {
        let mut cmd = match self.opts.nofile_limit {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--");
                if let Some(place) = &self.opts.place {
                    c.arg("nsenter")
                        .arg(format!("--net=/run/netns/{}", place.ns))
                        .arg("--");
                }
                c.arg(bin("cloudcore")?);
                c
            }
            None => match &self.opts.place {
                Some(place) => place.command(bin("cloudcore")?),
                None => Command::new(bin("cloudcore")?),
            },
        };
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .arg("serve")
            .arg("--api-addr")
            .arg(format!("{}:{}", self.ip, self.api_port))
            .arg("--hub-addr")
            .arg(format!("{}:{}", self.ip, self.hub_port))
            .arg("--idle-timeout-secs")
            .arg(self.opts.idle_timeout_secs.unwrap_or(4).to_string())
            .arg("--service-cluster-ip-range")
            .arg(&self.service_cidr)
            .arg("--cluster-cidr")
            .arg(&self.cluster_cidr);
        if self.opts.own_node_ports {
            cmd.arg("--service-node-port-range")
                .arg(&self.node_port_range);
        }
        if let Some(n) = self.opts.watch_history {
            cmd.arg("--watch-history").arg(n.to_string());
        }
        if let Some(secs) = self.opts.node_monitor_grace_period_secs {
            cmd.arg("--node-monitor-grace-period")
                .arg(secs.to_string())
                .args(["--node-monitor-period", "1"]);
        }
        cmd.args(&self.opts.extra_args);
        if self.mosquitto.is_some() {
            cmd.arg("--mqtt-url").arg(self.mqtt_url());
        } else {
            cmd.arg("--mqtt-listen")
                .arg(format!("{}:{}", self.ip, self.mqtt_port));
        }
        if let Some(place) = &self.opts.place {
            // The serving certificate must name the addresses edges dial: the namespace's own
            // and any relay's in front of it.
            for name in &place.server_names {
                cmd.arg("--server-name").arg(name);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("cloudcore.log"))?;
        cmd.stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info,skerry=debug,cloudcore=debug");
        self.child = Some(cmd.spawn().context("start cloudcore")?);
        let ca_path = self.ca_path();
        let ca = eventually("cloudcore's CA", Duration::from_secs(20), || {
            let p = ca_path.clone();
            async move { Ok(std::fs::read(&p).ok()) }
        })
        .await?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .timeout(Duration::from_secs(10))
            .build()?;
        let url = format!("{}/healthz", self.api_url());
        eventually("cloudcore API", Duration::from_secs(20), || {
            let (h, u) = (http.clone(), url.clone());
            async move {
                Ok(h.get(&u)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await
        .with_context(|| self.log_tail())?;
        // The API refuses anonymous requests: the harness is an admin with a bearer token, and
        // kubectl uses the kubeconfig `cloudcore kubeconfig` wrote (created once per data dir,
        // after the API answered, so the PKI is complete).
        if !self.kubeconfig_path().exists() {
            self.write_kubeconfig(&self.kubeconfig_path(), &["--token"])?;
        }
        let http = self
            .admin_client_builder()?
            .timeout(Duration::from_secs(10))
            .build()?;
        self.http = Some(http);
        Ok(())
    }

    /// An HTTP client builder for the harness's admin: trusts the cluster CA and sends the
    /// bearer token of the harness kubeconfig (benches set their own timeouts and pooling).
    pub fn admin_client_builder(&self) -> Result<reqwest::ClientBuilder> {
        let kubeconfig = std::fs::read_to_string(self.kubeconfig_path())?;
        let token = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .ok_or_else(|| anyhow!("no token in the harness kubeconfig"))?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        let ca = std::fs::read(self.ca_path())?;
        Ok(reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .default_headers(headers))
    }

    /// The admin kubeconfig the harness uses (a bearer token).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `cloudcore kubeconfig --user admin --server <api> --out PATH` plus `extra` arguments.
    pub fn write_kubeconfig(&self, path: &Path, extra: &[&str]) -> Result<()> {
        let out = Command::new(bin("cloudcore")?)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["kubeconfig", "--user", "admin", "--server", &self.api_url()])
            .arg("--out")
            .arg(path)
            .args(extra)
            .output()?;
        if !out.status.success() {
            bail!(
                "cloudcore kubeconfig failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A client that trusts the CA but presents no credentials, for refusal tests.
    pub fn anonymous_client(&self) -> Result<reqwest::Client> {
        let ca = std::fs::read(self.ca_path())?;
        Ok(reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .timeout(Duration::from_secs(10))
            .build()?)
    }

    /// Stops with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        stop_child(&mut self.child, 9);
    }

    /// Pid of the running cloudcore.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of cloudcore's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("cloudcore.log")).unwrap_or_default();
        // Without backtrace frames, which would push the error itself out of the tail.
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !(t.starts_with("at ")
                    || t.split_once(": ")
                        .is_some_and(|(n, _)| n.parse::<u32>().is_ok()))
            })
            .collect();
        format!(
            "\n--- cloudcore log ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// `cloudcore token create`: returns (token, ca-hash).
    pub fn token(&self, ttl: &str) -> Result<(String, String)> {
        self.token_with(&["--ttl", ttl])
    }

    /// `cloudcore token create --node NODE`: a token that admits only `node`.
    pub fn token_for(&self, node: &str) -> Result<(String, String)> {
        self.token_with(&["--ttl", "1h", "--node", node])
    }

    fn token_with(&self, args: &[&str]) -> Result<(String, String)> {
        let out = Command::new(bin("cloudcore")?)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["token", "create"])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8(out.stdout)?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .ok_or_else(|| anyhow!("no {name} in {text}"))
        };
        Ok((field("token:")?, field("ca-hash:")?))
    }

    /// `cloudcore node revoke NAME`.
    pub fn revoke(&self, node: &str) -> Result<()> {
        let out = Command::new(bin("cloudcore")?)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["node", "revoke", node])
            .output()?;
        if !out.status.success() {
            bail!(
                "node revoke failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn client(&self) -> Result<&reqwest::Client> {
        self.http
            .as_ref()
            .ok_or_else(|| anyhow!("cloudcore is not running"))
    }

    /// One API request; returns status and JSON body.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self
            .client()?
            .request(method.parse()?, format!("{}{}", self.api_url(), path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// GET that must succeed.
    pub async fn get(&self, path: &str) -> Result<Option<Value>> {
        let (status, v) = self.api("GET", path, None).await?;
        match status {
            200 => Ok(Some(v)),
            404 => Ok(None),
            s => bail!("GET {path}: {s} {v}"),
        }
    }

    /// Waits until GET `path` satisfies `pred`; returns the object.
    pub async fn wait_for(
        &self,
        what: &str,
        path: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        eventually(what, deadline, || async {
            Ok(self.get(path).await?.filter(|v| pred(v)))
        })
        .await
        .with_context(|| self.log_tail())
    }

    /// Creates a pod in `default` and checks that the API accepted it.
    pub async fn create_pod(&self, pod: Value) -> Result<Value> {
        let (code, body) = self
            .api("POST", "/api/v1/namespaces/default/pods", Some(pod))
            .await?;
        if code != 201 {
            bail!("pod create answered {code}: {body}");
        }
        Ok(body)
    }

    /// Deletes pod `default/name` (gracefully: the node confirms); returns the answer's body.
    pub async fn delete_pod(&self, name: &str) -> Result<Value> {
        let path = format!("/api/v1/namespaces/default/pods/{name}");
        let (code, body) = self.api("DELETE", &path, None).await?;
        if code != 200 && code != 202 {
            bail!("delete {name}: {code} {body}");
        }
        Ok(body)
    }

    /// Waits until pod `default/name` runs (phase Running, first container running).
    pub async fn wait_running(&self, name: &str, deadline: Duration) -> Result<Value> {
        let path = format!("/api/v1/namespaces/default/pods/{name}");
        self.wait_for(&format!("pod {name} Running"), &path, deadline, pod_running)
            .await
    }

    /// Waits until node `name` reports Ready.
    pub async fn wait_node_ready(&self, name: &str, deadline: Duration) -> Result<Value> {
        let path = format!("/api/v1/nodes/{name}");
        self.wait_for(&format!("node {name} Ready"), &path, deadline, node_ready)
            .await
    }

    /// Runs the real kubectl against this cloud; returns (success, stdout + stderr).
    pub fn kubectl(&self, args: &[&str]) -> Result<(bool, String)> {
        kubectl_with(&self.kubeconfig_path(), args)
    }

    /// `edgecore join` of `name` into `dir` with a fresh token, without starting the agent;
    /// returns (success, output).
    pub fn join_only(&self, dir: &Path, name: &str) -> Result<(bool, String)> {
        let (token, hash) = self.token("1h")?;
        let mqtt = self.mqtt_url();
        join_raw(
            dir,
            &self.hub_addr(),
            &token,
            &hash,
            name,
            &["--mqtt-url", &mqtt],
        )
    }

    /// The value of a metric (first sample, labels ignored) from cloudcore's `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let (_, body) = self.api("GET", "/metrics", None).await?;
        let text = body.as_str().unwrap_or_default().to_string();
        Ok(text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = rest.rsplit(' ').next()?;
            (rest.starts_with(' ') || rest.starts_with('{'))
                .then(|| value.parse().ok())
                .flatten()
        }))
    }

    /// The value of the sample `series` (a metric name with its labels exactly as the exporter
    /// prints them, e.g. `skerry_api_connections_rejected_total{reason="global"}`), if present.
    pub async fn metric_series(&self, series: &str) -> Result<Option<f64>> {
        let (status, body) = self.api("GET", "/metrics", None).await?;
        if status != 200 {
            bail!("GET /metrics: {status} {body}");
        }
        let text = body.as_str().unwrap_or_default().to_string();
        Ok(text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .and_then(|v| v.trim().parse().ok())
        }))
    }

    /// Waits until the hub has exactly `n` live node sessions.
    pub async fn wait_hub_sessions(&self, n: u32, deadline: Duration) -> Result<()> {
        eventually(&format!("{n} hub session(s)"), deadline, || async {
            let live = self.metric("skerry_hub_connected_nodes").await?;
            Ok((live == Some(f64::from(n))).then_some(()))
        })
        .await
    }

    /// Waits until GET `path` is 404.
    pub async fn wait_gone(&self, what: &str, path: &str, deadline: Duration) -> Result<()> {
        eventually(what, deadline, || async {
            Ok(self.get(path).await?.is_none().then_some(()))
        })
        .await
        .with_context(|| self.log_tail())
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        stop_child(&mut self.child, 9);
        // Before the data dir (the first field) goes: the broker's files are in it.
        self.mosquitto.take();
    }
}

/// The pressure thresholds of the harness's edges (see [`Edge::start`]).
pub const HARNESS_EVICTION_HARD: &str = "memory.available<100Mi,nodefs.available<1%,nodefs.inodesFree<1%,imagefs.available<1%,imagefs.inodesFree<1%,pid.available<1%";

/// A joined edge node.
pub struct Edge {
    /// Data dir.
    pub dir: TempDir,
    /// Node name.
    pub name: String,
    child: Option<Child>,
    server: String,
    mqtt_url: String,
    /// Metrics port.
    pub metrics_port: u16,
    /// Extra arguments of `edgecore run` (the runtime selection).
    run_args: Vec<String>,
    /// `SKERRY_RESTART_BACKOFF_BASE_MS` of the next start: 300 ms for the tests (so that
    /// crash-loop tests do not wait 10 s), `None` for kubelet's 10 s (the benches).
    pub restart_backoff_base_ms: Option<u64>,
    /// `--idle-timeout-secs` of the next start (4 s for quick tests).
    pub idle_timeout_secs: u64,
    /// The namespace edgecore runs in and the address it reports and serves metrics on
    /// (`None`: loopback of the test's own namespace).
    pub place: Option<netns::Place>,
    /// The heartbeat and link timing flags of the next start ([`TEST_TIMING`] unless a bench
    /// sets edgecore's own defaults, or others).
    pub timing_args: Vec<String>,
    /// The Service proxy's nftables table and the cluster DNS interface of a networked edge
    /// ([`Edge::join_and_start_cri_networked`]), removed when the edge is dropped: edgecore
    /// leaves both in place when it stops, on purpose.
    pub network_owned: Option<(String, String)>,
    /// The `edgecore run` flags of a networked edge (CNI directory, proxy table, DNS
    /// interface): `run` only, `edgecore logs` does not take them.
    network_args: Vec<String>,
    /// The address the edge reports (`--node-ip`) and serves metrics on, when not the
    /// place's or loopback ([`Edge::join_and_start_process_networked`]).
    node_ip: Option<String>,
}

/// Numbers the names of networked edges' tables and interfaces within one test process.
static NETWORK_TAG: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The timing the tests run edges with: test clouds use a node-monitor grace of a few seconds,
/// so keep-alives (the node's liveness) and condition measurements come every second.
pub const TEST_TIMING: [&str; 6] = [
    "--heartbeat-secs",
    "1",
    "--keepalive-secs",
    "1",
    "--deaf-after-secs",
    "3",
];

/// Runs `edgecore join`; returns (success, combined output).
pub fn join_raw(
    dir: &Path,
    server: &str,
    token: &str,
    ca_hash: &str,
    name: &str,
    extra: &[&str],
) -> Result<(bool, String)> {
    join_raw_in(None, dir, server, token, ca_hash, name, extra)
}

/// [`join_raw`] from inside `place`'s network namespace.
pub fn join_raw_in(
    place: Option<&netns::Place>,
    dir: &Path,
    server: &str,
    token: &str,
    ca_hash: &str,
    name: &str,
    extra: &[&str],
) -> Result<(bool, String)> {
    let mut cmd = match place {
        Some(p) => p.command(bin("edgecore")?),
        None => Command::new(bin("edgecore")?),
    };
    let out = cmd
        .arg("--data-dir")
        .arg(dir)
        .args([
            "join",
            "--server",
            server,
            "--token",
            token,
            "--ca-hash",
            ca_hash,
            "--node-name",
            name,
        ])
        .args(extra)
        .output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

impl Edge {
    /// Joins `cloud` as `name`, labels the node with `labels` (key=value) as an admin would, and
    /// starts the agent.
    pub async fn join_and_start(cloud: &Cloud, name: &str, labels: &[&str]) -> Result<Self> {
        Self::join_and_start_with(cloud, name, labels, cloud.token("1h")?).await
    }

    /// Like [`Edge::join_and_start`] with a given `(token, ca-hash)`.
    pub async fn join_and_start_with(
        cloud: &Cloud,
        name: &str,
        labels: &[&str],
        token: (String, String),
    ) -> Result<Self> {
        Self::join_and_start_opts(cloud, name, labels, token, vec![], None).await
    }

    /// Like [`Edge::join_and_start`], with extra arguments for `edgecore run`.
    pub async fn join_and_start_args(cloud: &Cloud, name: &str, run_args: &[&str]) -> Result<Self> {
        let args = run_args.iter().map(|a| a.to_string()).collect();
        Self::join_and_start_opts(cloud, name, &[], cloud.token("1h")?, args, None).await
    }

    /// Joins and starts an agent inside `place`'s network namespace, dialling `server` (the
    /// hub, `host:port`) and `mqtt_url` (the broker): the cloud's own addresses, or a relay's.
    pub async fn join_and_start_in(
        cloud: &Cloud,
        name: &str,
        place: netns::Place,
        server: Option<String>,
        mqtt_url: Option<String>,
    ) -> Result<Self> {
        let token = cloud.token("1h")?;
        let mut edge = Self::join_prepare(
            cloud,
            name,
            &[],
            token,
            vec![],
            Some(place),
            server,
            mqtt_url,
        )?;
        edge.start()?;
        Ok(edge)
    }

    /// Joins and starts an agent that runs real containers through `ctrd`'s CRI.
    pub async fn join_and_start_cri(
        cloud: &Cloud,
        name: &str,
        ctrd: &containerd::Containerd,
    ) -> Result<Self> {
        let run_args = vec![
            "--runtime".to_string(),
            "cri".to_string(),
            "--cri-socket".to_string(),
            ctrd.socket.to_string_lossy().into_owned(),
        ];
        Self::join_and_start_opts(cloud, name, &[], cloud.token("1h")?, run_args, None).await
    }

    /// Like [`Edge::join_and_start_cri`], with the edge owning the CNI configuration of `ctrd`
    /// (`--cni-conf-dir`) and running its Service proxy and cluster DNS under names of its own
    /// (its pods get addresses from the node's pod CIDR, allocated by the cloud). `extra` are
    /// more `edgecore run` flags.
    pub async fn join_and_start_cri_networked(
        cloud: &Cloud,
        name: &str,
        ctrd: &containerd::Containerd,
        extra: &[&str],
    ) -> Result<Self> {
        Self::join_and_start_cri_networked_in(cloud, name, ctrd, extra, None).await
    }

    /// Like [`Edge::join_and_start_cri_networked`], inside `place`'s network namespace (give
    /// it a containerd started there, [`containerd::Containerd::start_in`]): a node with a
    /// network of its own, for the overlay between nodes.
    pub async fn join_and_start_cri_networked_in(
        cloud: &Cloud,
        name: &str,
        ctrd: &containerd::Containerd,
        extra: &[&str],
        place: Option<netns::Place>,
    ) -> Result<Self> {
        let run_args = vec![
            "--runtime".to_string(),
            "cri".to_string(),
            "--cri-socket".to_string(),
            ctrd.socket.to_string_lossy().into_owned(),
        ];
        let mut network_args = vec![
            "--cni-conf-dir".to_string(),
            ctrd.dir().join("cni").to_string_lossy().into_owned(),
            "--cni-network".to_string(),
            ctrd.network.clone(),
            "--cni-bridge".to_string(),
            ctrd.bridge.clone(),
        ];
        network_args.extend(extra.iter().map(|s| s.to_string()));
        Self::join_and_start_networked(cloud, name, run_args, network_args, None, place).await
    }

    /// A process-runtime edge (pods are host processes on the host's network) running its
    /// Service proxy and cluster DNS under names of its own, reporting `node_ip` (a routable
    /// address of this machine, so that its pods, whose pod IP is the node's, are endpoints).
    pub async fn join_and_start_process_networked(
        cloud: &Cloud,
        name: &str,
        node_ip: &str,
    ) -> Result<Self> {
        let run_args = vec!["--runtime".to_string(), "process".to_string()];
        Self::join_and_start_networked(
            cloud,
            name,
            run_args,
            Vec::new(),
            Some(node_ip.into()),
            None,
        )
        .await
    }

    async fn join_and_start_networked(
        cloud: &Cloud,
        name: &str,
        run_args: Vec<String>,
        mut network_args: Vec<String>,
        node_ip: Option<String>,
        place: Option<netns::Place>,
    ) -> Result<Self> {
        let tag = NETWORK_TAG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (table, iface) = (
            format!("skt{}x{tag}", std::process::id()),
            format!("skd{}x{tag}", std::process::id() % 100_000),
        );
        network_args.extend([
            "--proxy-table".to_string(),
            table.clone(),
            "--dns-interface".to_string(),
            iface.clone(),
            "--overlay-interface".to_string(),
            format!("sko{}x{tag}", std::process::id() % 100_000),
            "--overlay-table".to_string(),
            format!("{table}o"),
        ]);
        let mut edge = Self::join_prepare(
            cloud,
            name,
            &[],
            cloud.token("1h")?,
            run_args,
            place,
            None,
            None,
        )?;
        edge.network_owned = Some((table, iface));
        edge.network_args = network_args;
        edge.node_ip = node_ip;
        edge.start()?;
        Ok(edge)
    }

    async fn join_and_start_opts(
        cloud: &Cloud,
        name: &str,
        labels: &[&str],
        token: (String, String),
        run_args: Vec<String>,
        place: Option<netns::Place>,
    ) -> Result<Self> {
        let mut edge = Self::join_prepare(cloud, name, labels, token, run_args, place, None, None)?;
        edge.start()?;
        Ok(edge)
    }

    #[allow(clippy::too_many_arguments)]
    fn join_prepare(
        cloud: &Cloud,
        name: &str,
        labels: &[&str],
        (token, hash): (String, String),
        run_args: Vec<String>,
        place: Option<netns::Place>,
        server: Option<String>,
        mqtt_url: Option<String>,
    ) -> Result<Self> {
        let dir = temp_dir("skerry-edge-")?;
        let server = server.unwrap_or_else(|| cloud.hub_addr());
        let mqtt = mqtt_url.unwrap_or_else(|| cloud.mqtt_url());
        let extra = vec!["--mqtt-url", mqtt.as_str()];
        let (ok, out) = join_raw_in(
            place.as_ref(),
            dir.path(),
            &server,
            &token,
            &hash,
            name,
            &extra,
        )?;
        if !ok {
            bail!("join of {name} failed: {out}{}", cloud.log_tail());
        }
        // Labels that steer workloads are the admin's to set (a node may not claim them at
        // join), so the harness sets them as an admin does, before the agent starts.
        if !labels.is_empty() {
            let mut args = vec!["label", "node", name, "--overwrite"];
            args.extend(labels.iter().copied());
            let (ok, out) = cloud.kubectl(&args)?;
            if !ok {
                bail!("kubectl label node {name}: {out}");
            }
        }
        let edge = Edge {
            dir,
            name: name.into(),
            child: None,
            server,
            mqtt_url: mqtt,
            metrics_port: free_tcp_port(),
            run_args,
            restart_backoff_base_ms: Some(300),
            idle_timeout_secs: 4,
            place,
            timing_args: TEST_TIMING.iter().map(|a| a.to_string()).collect(),
            network_owned: None,
            network_args: Vec::new(),
            node_ip: None,
        };
        Ok(edge)
    }

    /// The address edgecore reports and serves its metrics on.
    pub fn ip(&self) -> String {
        if let Some(ip) = &self.node_ip {
            return ip.clone();
        }
        self.place
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |p| p.ip.to_string())
    }

    /// Sets one timing flag (`--deaf-after-secs`, ...) of the next start, replacing its value if
    /// the timing already has it.
    pub fn set_timing(&mut self, flag: &str, value: &str) {
        match self.timing_args.iter().position(|a| a == flag) {
            Some(i) if i + 1 < self.timing_args.len() => {
                self.timing_args[i + 1] = value.to_string()
            }
            _ => self
                .timing_args
                .extend([flag.to_string(), value.to_string()]),
        }
    }

    /// Starts (or restarts) the agent.
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("edgecore.log"))?;
        let mut cmd = match &self.place {
            Some(p) => p.command(bin("edgecore")?),
            None => Command::new(bin("edgecore")?),
        };
        let ip = self.ip();
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args([
                "run",
                "--node-ip",
                &ip,
                "--idle-timeout-secs",
                &self.idle_timeout_secs.to_string(),
            ])
            .args(&self.timing_args)
            // The machine running the tests is not what they test: a build machine's disk can
            // be 86% full of build output, which kubelet's default `imagefs.available<15%`
            // reports (truthfully) as DiskPressure, tainting every test node NoSchedule. A full
            // disk still shows.
            .args(["--eviction-hard", HARNESS_EVICTION_HARD])
            .args(["--server", &self.server, "--mqtt-url", &self.mqtt_url])
            .arg("--metrics-addr")
            .arg(format!("{ip}:{}", self.metrics_port))
            .args(&self.run_args)
            // Off unless a test asks (a networked edge): the proxy and the DNS server program
            // the machine, and concurrent tests' edges must not share a table or an address.
            .args(if self.network_args.is_empty() {
                vec![
                    "--service-proxy=false".to_string(),
                    "--cluster-dns=false".to_string(),
                    "--overlay=false".to_string(),
                ]
            } else {
                self.network_args.clone()
            })
            .env("RUST_LOG", "info,edgecore=debug")
            .stdout(Stdio::null())
            .stderr(log);
        match self.restart_backoff_base_ms {
            Some(ms) => cmd.env("SKERRY_RESTART_BACKOFF_BASE_MS", ms.to_string()),
            None => cmd.env_remove("SKERRY_RESTART_BACKOFF_BASE_MS"),
        };
        let child = cmd.spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Graceful stop (SIGTERM); pods keep running.
    pub fn stop(&mut self) {
        stop_child(&mut self.child, 15);
    }

    /// Crash (SIGKILL); pods keep running.
    pub fn kill9(&mut self) {
        stop_child(&mut self.child, 9);
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the running edgecore.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Pid of the running edgecore.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pids of processes that belong to this node's pods (their working dir or command line is
    /// under the data dir).
    pub fn pod_pids(&self) -> Vec<u32> {
        pids_under(self.dir.path(), self.child.as_ref().map(|c| c.id()))
    }

    /// Pids of the containers' own processes (not their shims) whose command line starts with
    /// `program`.
    pub fn container_pids(&self, program: &str) -> Vec<u32> {
        self.pod_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| c.split(|b| *b == 0).next() == Some(program.as_bytes()))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// `edgecore logs POD` on this node: (success, output).
    pub fn logs(&self, pod: &str) -> Result<(bool, String)> {
        let out = Command::new(bin("edgecore")?)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["logs", pod])
            // The runtime selection of `run` (`logs` takes the same flags).
            .args(&self.run_args)
            .output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// `edgecore exec ARGS` on this node (ARGS: the pod, flags, `--` and the command), with
    /// `stdin` as its input: (exit code, stdout, stderr).
    pub fn exec_local(&self, args: &[&str], stdin: &[u8]) -> Result<(i32, String, String)> {
        use std::io::Write;
        let mut child = Command::new(bin("edgecore")?)
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("exec")
            // The runtime selection of `run` (`exec` takes the same flags), before the `--`.
            .args(&self.run_args)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin)?;
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Kills every pod process, as a reboot would.
    pub fn kill_pods(&self) {
        for pid in self.pod_pids() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// A power cut of the pods: every pod process (shims included) is frozen first, then
    /// killed, so that no shim lives to record its container's exit, as when the host loses
    /// power. Returns once none is left.
    pub fn power_cut_pods(&self) -> Result<()> {
        let pids = self.pod_pids();
        for signal in ["-STOP", "-KILL"] {
            for pid in &pids {
                let _ = Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .status();
            }
        }
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !self.pod_pids().is_empty() {
            if std::time::Instant::now() > end {
                bail!("pod processes survived SIGKILL: {:?}", self.pod_pids());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The text of edgecore's `/metrics`.
    pub async fn metrics_text(&self) -> Result<String> {
        let url = format!("http://{}:{}/metrics", self.ip(), self.metrics_port);
        Ok(reqwest::get(&url).await?.error_for_status()?.text().await?)
    }

    /// The value of the sample `series` of edgecore's `/metrics` (a metric name with its labels
    /// exactly as the exporter prints them), if present.
    pub async fn metric_series(&self, series: &str) -> Result<Option<f64>> {
        Ok(sample(&self.metrics_text().await?, series))
    }

    /// The last lines of edgecore's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("edgecore.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "\n--- edgecore {} log ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

/// The value of the sample `series` (name and labels as printed) in a Prometheus text page.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Processes whose cwd or command line is under `dir`, except `exclude`.
pub fn pids_under(dir: &Path, exclude: Option<u32>) -> Vec<u32> {
    let dir_s = dir.to_string_lossy().to_string();
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if Some(pid) == exclude || pid == std::process::id() {
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
            continue;
        }
        if cwd.starts_with(&dir_s) || cmdline.contains(&dir_s) {
            out.push(pid);
        }
    }
    out
}

impl Drop for Edge {
    fn drop(&mut self) {
        stop_child(&mut self.child, 9);
        self.kill_pods();
        remove_pod_cgroups(&self.dir.path().join("pods"));
        if let Some((table, iface)) = &self.network_owned {
            // In a namespace of its own, the namespace takes them with it.
            for t in [table.clone(), format!("{table}o")] {
                let _ = Command::new("nft")
                    .args(["delete", "table", "ip", &t])
                    .output();
            }
            let _ = Command::new("ip").args(["link", "del", iface]).output();
        }
    }
}

/// Removes the cgroups the process runtime made for the pods under `pods_dir` (its shims,
/// killed with the edge, could not): `skerry-<pod-uid>-*` under this process's cgroups, where
/// an edgecore it started makes them. A cgroup left behind would outlive the test.
fn remove_pod_cgroups(pods_dir: &Path) {
    let uids: Vec<String> = std::fs::read_dir(pods_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if uids.is_empty() {
        return;
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let points: Vec<String> = read("/proc/self/mountinfo")
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup")
                .then(|| left.split(' ').nth(4).map(str::to_string))?
        })
        .collect();
    let paths: Vec<String> = read("/proc/self/cgroup")
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_string))
        .collect();
    for point in &points {
        for path in &paths {
            let dir = Path::new(point).join(path.trim_start_matches('/'));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !uids
                    .iter()
                    .any(|u| name.starts_with(&format!("skerry-{u}-")))
                {
                    continue;
                }
                // Its processes were just killed: they leave it as they are reaped.
                for _ in 0..100 {
                    if std::fs::remove_dir(e.path()).is_ok() || !e.path().exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// Joins `name` to `cloud` without starting edgecore: a fresh data dir holding only the node's
/// identity (`pki/`), for tests that speak the sync protocol themselves ([`SyncClient`]).
pub fn join_identity(cloud: &Cloud, name: &str) -> Result<TempDir> {
    let dir = temp_dir("skerry-node-")?;
    let (token, hash) = cloud.token("1h")?;
    let (ok, out) = join_raw(dir.path(), &cloud.hub_addr(), &token, &hash, name, &[])?;
    if !ok {
        bail!("join of {name} failed: {out}{}", cloud.log_tail());
    }
    Ok(dir)
}

/// A QUIC client config that presents the node certificate in `edge_dir/pki` and speaks the
/// sync ALPN.
pub fn node_client_config(edge_dir: &Path) -> Result<quinn::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = edge_dir.join("pki");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
        roots.add(c?)?;
    }
    let chain =
        CertificateDer::pem_file_iter(pki.join("node.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pki.join("node.key"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![protocol::ALPN_SYNC.to_vec()];
    Ok(quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

/// A node session driven by hand: sends Hello with a chosen acked revision, then reads the
/// hub's batches exactly as they arrive and acks what the test says. It sees the wire, so tests
/// can assert what a node receives and in which batch.
pub struct SyncClient {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The protocol version it speaks: a v7 client reads only v7's shapes
    /// (`protocol::compat::v7`).
    version: u32,
}

impl SyncClient {
    /// The QUIC connection, for its statistics (UDP bytes each way: what the edge link
    /// carries, headers, acks and keep-alives included).
    pub fn connection(&self) -> quinn::Connection {
        self.conn.clone()
    }

    /// Opens a session for the node whose identity is in `edge_dir`, claiming `acked`.
    pub async fn connect(cloud: &Cloud, edge_dir: &Path, node: &str, acked: u64) -> Result<Self> {
        match Self::connect_speaking(cloud, edge_dir, node, acked, protocol::PROTOCOL_VERSION)
            .await?
        {
            Ok(client) => Ok(client),
            Err(reject) => bail!("expected Welcome, got {reject:?}"),
        }
    }

    /// Opens a session whose Hello claims protocol `version`: the session, or the hub's
    /// refusal.
    pub async fn connect_speaking(
        cloud: &Cloud,
        edge_dir: &Path,
        node: &str,
        acked: u64,
        version: u32,
    ) -> Result<std::result::Result<Self, protocol::messages::Reject>> {
        Self::connect_with(cloud, edge_dir, node, acked, version, None).await
    }

    /// Like [`SyncClient::connect_speaking`], sending QUIC keep-alives every `keep_alive` (a
    /// session a test holds open for minutes, as a real edge does).
    pub async fn connect_with(
        cloud: &Cloud,
        edge_dir: &Path,
        node: &str,
        acked: u64,
        version: u32,
        keep_alive: Option<Duration>,
    ) -> Result<std::result::Result<Self, protocol::messages::Reject>> {
        use protocol::messages::{CloudMessage, EdgeMessage, Hello};
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let mut config = node_client_config(edge_dir)?;
        if let Some(every) = keep_alive {
            let mut transport = quinn::TransportConfig::default();
            transport.keep_alive_interval(Some(every));
            config.transport_config(std::sync::Arc::new(transport));
        }
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(cloud.hub_addr().parse()?, "127.0.0.1")?
            .await?;
        let (send, recv) = conn.open_bi().await?;
        let mut client = Self {
            _endpoint: endpoint,
            conn,
            send,
            recv,
            version,
        };
        client
            .write(&EdgeMessage::Hello(Hello {
                protocol_version: version,
                node_name: node.to_string(),
                acked_revision: acked,
            }))
            .await?;
        match client.read(Duration::from_secs(10)).await? {
            CloudMessage::Welcome(_) => Ok(Ok(client)),
            CloudMessage::Reject(r) => Ok(Err(r)),
            other => bail!("expected Welcome or Reject, got {other:?}"),
        }
    }

    async fn write(&mut self, msg: &protocol::messages::EdgeMessage) -> Result<()> {
        let bytes = protocol::codec::encode_frame(msg)?;
        self.send.write_all(&bytes).await?;
        Ok(())
    }

    async fn read(&mut self, deadline: Duration) -> Result<protocol::messages::CloudMessage> {
        let recv = &mut self.recv;
        tokio::time::timeout(deadline, async move {
            let mut header = [0u8; protocol::codec::HEADER_LEN];
            recv.read_exact(&mut header).await?;
            let mut payload = vec![0u8; protocol::codec::frame_len(header)?];
            recv.read_exact(&mut payload).await?;
            Ok::<_, anyhow::Error>(payload)
        })
        .await
        .map_err(|_| anyhow!("no message from the hub within {deadline:?}"))?
        .and_then(|payload| self.decode(&payload))
    }

    /// Decodes a message as the version this client speaks reads it: a v7 client reads v7's
    /// shapes (pods without init containers; a message in today's shapes fails to decode, as
    /// it would on a real v7 edge) and gives them in today's.
    fn decode(&self, payload: &[u8]) -> Result<protocol::messages::CloudMessage> {
        use protocol::compat::v7;
        use protocol::messages::CloudMessage;
        if self.version != v7::VERSION {
            return Ok(protocol::codec::decode(payload)?);
        }
        let msg: v7::CloudMessage = protocol::codec::decode(payload)
            .context("a v7 edge could not decode the hub's message")?;
        Ok(match msg {
            v7::CloudMessage::Welcome(w) => CloudMessage::Welcome(w),
            v7::CloudMessage::Reject(r) => CloudMessage::Reject(r),
            v7::CloudMessage::Sync(b) => CloudMessage::Sync(b.into()),
        })
    }

    /// The next batch.
    pub async fn next_batch(
        &mut self,
        deadline: Duration,
    ) -> Result<protocol::messages::SyncBatch> {
        match self.read(deadline).await? {
            protocol::messages::CloudMessage::Sync(b) => Ok(b),
            other => bail!("expected a SyncBatch, got {other:?}"),
        }
    }

    /// Sends one QUIC datagram on the session's connection (the overlay's pod packets).
    pub fn send_datagram(&self, payload: Vec<u8>) -> Result<()> {
        Ok(self.conn.send_datagram(payload.into())?)
    }

    /// The next QUIC datagram the hub sends on the session's connection, if one comes
    /// within `deadline`.
    pub async fn datagram(&self, deadline: Duration) -> Result<Option<Vec<u8>>> {
        match tokio::time::timeout(deadline, self.conn.read_datagram()).await {
            Ok(d) => Ok(Some(d?.to_vec())),
            Err(_) => Ok(None),
        }
    }

    /// Acks a batch revision, as the edge does once a batch is durable.
    pub async fn ack(&mut self, revision: u64) -> Result<()> {
        self.write(&protocol::messages::EdgeMessage::Ack(
            protocol::messages::Ack { revision },
        ))
        .await
    }

    /// Reads and acks batches until one satisfies `pred`; returns every batch read, in order.
    pub async fn batches_until(
        &mut self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&protocol::messages::SyncBatch) -> bool,
    ) -> Result<Vec<protocol::messages::SyncBatch>> {
        let end = tokio::time::Instant::now() + deadline;
        let mut seen = Vec::new();
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let batch = self
                .next_batch(left)
                .await
                .with_context(|| format!("waiting for {what}; got {seen:?}"))?;
            self.ack(batch.revision).await?;
            let done = pred(&batch);
            seen.push(batch);
            if done {
                return Ok(seen);
            }
        }
    }

    /// Ends the session as a node going away would.
    pub fn close(self) {
        self.conn.close(0u32.into(), b"test done");
    }
}

/// Creates a process-runtime pod `name` on `node` that writes `bytes` bytes of 64-byte lines
/// to its log, then `done` on a line of its own, then sleeps; returns, once the whole log is
/// written (its last line read through the cloud), the URL of its log.
pub async fn chatty_pod(cloud: &Cloud, name: &str, node: &str, bytes: u64) -> Result<String> {
    let script = format!(
        "yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789a | head -c {bytes}; echo; \
         echo done; exec sleep 3600"
    );
    cloud
        .create_pod(process_pod(name, node, &["sh", "-c", &script]))
        .await?;
    let client = cloud.admin_client_builder()?.build()?;
    let url = format!(
        "{}/api/v1/namespaces/default/pods/{name}/log",
        cloud.api_url()
    );
    eventually(
        "the whole log written",
        Duration::from_secs(300),
        || async {
            let resp = client.get(format!("{url}?tailLines=1")).send().await?;
            Ok((resp.text().await? == "done\n").then_some(()))
        },
    )
    .await?;
    Ok(url)
}

/// A pod manifest running `command` as a native process on `node`.
pub fn process_pod(name: &str, node: &str, command: &[&str]) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "busybox:local", "command": command}]
        }
    })
}

/// Whether a pod is Running with its first container running.
pub fn pod_running(pod: &Value) -> bool {
    phase(pod) == "Running"
        && pod
            .pointer("/status/containerStatuses/0/state/running")
            .is_some()
}

/// Whether a Node object's Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Phase of a pod object.
pub fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Restart count of the first container.
pub fn restarts(pod: &Value) -> u64 {
    pod.pointer("/status/containerStatuses/0/restartCount")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Container id of the first container.
pub fn container_id(pod: &Value) -> String {
    pod.pointer("/status/containerStatuses/0/containerID")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Resident memory of a process in KiB (VmRSS), if it runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name; the
    // kernel counts them in clock ticks of 1/100 s on Linux.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
