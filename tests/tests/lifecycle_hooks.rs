//! Container lifecycle hooks end to end (issue #14), on the CRI runtime with a private
//! containerd and on the process runtime: `lifecycle.postStart` holds the container back (the
//! pod is not Running) until it returned, a failing one gives kubelet's `FailedPostStartHook`
//! event and a restart, and `lifecycle.preStop` (exec, httpGet, sleep) runs before the SIGTERM
//! of `kubectl delete pod`. What the edge refuses (a tcpSocket hook) is a 422 from `kubectl
//! apply`.
//!
//! Every check is an order of events, seen in files the hooks and the workloads write into a
//! directory of the test (a hostPath volume on containerd, the directory itself for the
//! process runtime, whose containers run on the host's filesystem): nothing is timed.
//!
//! The CRI tests skip with a printed reason when containerd is not installed (run
//! deploy/setup.sh); under `CI=true` its absence fails them.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use skerry_tests::containerd::{self, Containerd, BUSYBOX_IMAGE};
use skerry_tests::{eventually, free_tcp_port, phase, Cloud, CloudOptions, Edge};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// Which runtime a scenario runs on, and what it needs of it.
enum Node {
    Cri { _ctrd: Containerd, _edge: Edge },
    Process { _edge: Edge },
}

/// A cluster of one node, and the directory the pods write into (`host` on the host; `inside`
/// as the containers see it).
struct Rig {
    cloud: Cloud,
    node: Node,
    name: String,
    _dir: tempfile::TempDir,
    host: PathBuf,
    inside: String,
}

impl Rig {
    /// A rig on containerd, or `None` (skipped) when it is not installed.
    async fn cri(name: &str) -> Result<Option<Self>> {
        if !containerd::require() {
            return Ok(None);
        }
        let ctrd = Containerd::start().await?;
        let cloud = Cloud::start(CloudOptions::default()).await?;
        let edge = Edge::join_and_start_cri(&cloud, name, &ctrd).await?;
        cloud.wait_node_ready(name, LONG).await?;
        let dir = tempfile::tempdir()?;
        Ok(Some(Self {
            cloud,
            node: Node::Cri {
                _ctrd: ctrd,
                _edge: edge,
            },
            name: name.into(),
            host: dir.path().to_path_buf(),
            _dir: dir,
            inside: "/work".into(),
        }))
    }

    /// A rig on the process runtime.
    async fn process(name: &str) -> Result<Self> {
        let cloud = Cloud::start(CloudOptions::default()).await?;
        let edge = Edge::join_and_start(&cloud, name, &[]).await?;
        cloud.wait_node_ready(name, LONG).await?;
        let dir = tempfile::tempdir()?;
        let inside = dir.path().to_string_lossy().into_owned();
        Ok(Self {
            cloud,
            node: Node::Process { _edge: edge },
            name: name.into(),
            host: dir.path().to_path_buf(),
            _dir: dir,
            inside,
        })
    }

    /// A container running `script` in `sh`, with the rig's directory at [`Self::inside`].
    fn container(&self, name: &str, script: &str) -> Value {
        let script = script.replace("W/", &format!("{}/", self.inside));
        match self.node {
            Node::Cri { .. } => json!({"name": name, "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent", "command": ["/bin/sh", "-c", script],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}),
            Node::Process { .. } => {
                json!({"name": name, "image": "busybox:local", "command": ["/bin/sh", "-c", script]})
            }
        }
    }

    /// An exec hook running `script` in `sh`.
    fn exec(&self, script: &str) -> Value {
        let script = script.replace("W/", &format!("{}/", self.inside));
        json!({"exec": {"command": ["/bin/sh", "-c", script]}})
    }

    /// Creates pod `name` on the rig's node with `containers`.
    async fn create(&self, name: &str, grace: u32, containers: Vec<Value>) -> Result<()> {
        let mut spec = json!({
            "nodeName": self.name,
            "terminationGracePeriodSeconds": grace,
            "containers": containers,
        });
        if let Node::Cri { .. } = self.node {
            spec["volumes"] = json!([{"name": "work",
                "hostPath": {"path": self.host.to_string_lossy(), "type": "Directory"}}]);
        }
        self.cloud
            .create_pod(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name}, "spec": spec}))
            .await?;
        Ok(())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.host.join(name)
    }

    async fn wait_file(&self, name: &str) -> Result<String> {
        let path = self.file(name);
        eventually(&format!("{}", path.display()), LONG, || async {
            Ok(std::fs::read_to_string(&path).ok())
        })
        .await
    }

    async fn pod(&self, name: &str) -> Result<Value> {
        self.cloud
            .get(&format!("/api/v1/namespaces/default/pods/{name}"))
            .await?
            .with_context(|| format!("pod {name} is gone"))
    }

    /// The pod's events of `reason`, through `kubectl get events` as an admin would ask.
    fn events(&self, pod: &str, reason: &str) -> Result<Vec<Value>> {
        let selector = format!("involvedObject.name={pod},reason={reason}");
        let (ok, out) =
            self.cloud
                .kubectl(&["get", "events", "--field-selector", &selector, "-o", "json"])?;
        if !ok {
            bail!("kubectl get events: {out}");
        }
        let list: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// postStart runs right after the start and the pod is not Running until it returned (the
/// hook waits for the test's go, and the test looks at the pod meanwhile); the app sees what
/// the hook wrote. preStop runs on `kubectl delete pod` before the SIGTERM: the app's TERM
/// trap finds the hook's file, and the order file reads hook, then TERM.
async fn post_start_holds_the_pod_and_pre_stop_runs_before_sigterm(rig: Rig) -> Result<()> {
    let mut app = rig.container(
        "app",
        "while [ ! -f W/started ]; do sleep 0.1; done; echo app saw $(cat W/started); \
         trap 'if [ -f W/stopping ]; then echo term-after-prestop >> W/order; \
         else echo term-before-prestop >> W/order; fi; exit 0' TERM; \
         while true; do sleep 0.1; done",
    );
    app["lifecycle"] = json!({
        "postStart": rig.exec("touch W/hook-running; while [ ! -f W/go ]; do sleep 0.1; done; \
                               echo the-hook > W/started"),
        "preStop": rig.exec("echo prestop >> W/order; touch W/stopping"),
    });
    rig.create("hooked", 30, vec![app]).await?;
    rig.wait_file("hook-running").await?;
    // The hook runs and waits: the container is not reported running, nor the pod.
    let pod = rig.pod("hooked").await?;
    assert_eq!(phase(&pod), "Pending", "{pod}");
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        status["state"]["waiting"]["reason"], "ContainerCreating",
        "{pod}"
    );
    assert_eq!(status["ready"], false, "{pod}");
    let (ok, out) = rig
        .cloud
        .kubectl(&["get", "pod", "hooked", "--no-headers"])?;
    assert!(ok && out.contains("ContainerCreating"), "{out}");
    std::fs::write(rig.file("go"), "go")?;
    let pod = rig.cloud.wait_running("hooked", LONG).await?;
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "{pod}"
    );
    eventually("the app's log", LONG, || async {
        let (ok, out) = rig.cloud.kubectl(&["logs", "hooked"])?;
        Ok((ok && out.contains("app saw the-hook")).then_some(()))
    })
    .await?;
    let (ok, out) = rig
        .cloud
        .kubectl(&["delete", "pod", "hooked", "--timeout=80s"])?;
    assert!(ok, "{out}");
    let order = read(&rig.file("order"));
    assert_eq!(
        order, "prestop\nterm-after-prestop\n",
        "order of preStop and TERM"
    );
    Ok(())
}

/// A postStart hook that fails: kubelet's `FailedPostStartHook` warning with the hook's
/// failure, in `kubectl get events` and `kubectl describe pod`, and the container restarted.
async fn a_failing_post_start_hook_is_an_event_and_a_restart(rig: Rig) -> Result<()> {
    let mut app = rig.container("app", "exec sleep 600");
    app["lifecycle"] = json!({"postStart": rig.exec("echo the hook broke; exit 3")});
    rig.create("broken", 1, vec![app]).await?;
    let event = eventually("a FailedPostStartHook event", LONG, || async {
        Ok(rig
            .events("broken", "FailedPostStartHook")?
            .into_iter()
            .next())
    })
    .await?;
    assert_eq!(event["type"], "Warning", "{event}");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("the hook broke") && message.contains("exited with 3"),
        "{event}"
    );
    let pod = rig
        .cloud
        .wait_for(
            "a restart",
            "/api/v1/namespaces/default/pods/broken",
            LONG,
            |p| {
                p["status"]["containerStatuses"][0]["restartCount"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
            },
        )
        .await?;
    let (ok, out) = rig.cloud.kubectl(&["describe", "pod", "broken"])?;
    assert!(ok && out.contains("FailedPostStartHook"), "{out}");
    // Killed for its hook, with the hook's failure as the reason it ended.
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("the hook broke")),
        "{pod}"
    );
    Ok(())
}

/// preStop httpGet reaches the server in the pod before its SIGTERM, and a preStop sleep holds
/// the SIGTERM back: the test marks that it saw the pod terminating, and the sleeper's TERM
/// trap (10 s later, within the 30 s grace) finds the mark.
async fn pre_stop_http_get_and_sleep_run_before_sigterm(rig: Rig) -> Result<()> {
    let port = match rig.node {
        Node::Cri { .. } => 8080,
        // The process runtime's pods share the host's network.
        Node::Process { .. } => free_tcp_port(),
    };
    let www = rig.file("www/cgi-bin");
    std::fs::create_dir_all(&www)?;
    let quit = www.join("quit");
    std::fs::write(
        &quit,
        format!(
            "#!/bin/sh\necho \"$REQUEST_METHOD $REQUEST_URI\" >> {}/requests\n\
             printf 'Content-Type: text/plain\\r\\n\\r\\nbye\\n'\n",
            rig.inside
        ),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&quit, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut web = rig.container(
        "web",
        &format!(
            "busybox httpd -f -p {port} -h W/www & pid=$!; \
             trap 'if grep -q quit W/requests; then echo term-after-request >> W/web-order; \
             else echo term-before-request >> W/web-order; fi; kill $pid; exit 0' TERM; \
             touch W/web-up; while true; do sleep 0.1; done"
        ),
    );
    web["ports"] = json!([{"name": "http", "containerPort": port}]);
    web["lifecycle"] = json!({"preStop": {"httpGet": {"port": "http", "path": "/cgi-bin/quit"}}});
    let mut sleeper = rig.container(
        "sleeper",
        "trap 'if [ -f W/seen-terminating ]; then echo term-after-mark >> W/sleep-order; \
         else echo term-before-mark >> W/sleep-order; fi; exit 0' TERM; \
         while true; do sleep 0.1; done",
    );
    sleeper["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 10}}});
    rig.create("stopper", 30, vec![web, sleeper]).await?;
    rig.cloud.wait_running("stopper", LONG).await?;
    rig.wait_file("web-up").await?;
    let (ok, out) = rig
        .cloud
        .kubectl(&["delete", "pod", "stopper", "--wait=false"])?;
    assert!(ok, "{out}");
    rig.cloud
        .wait_for(
            "the pod terminating",
            "/api/v1/namespaces/default/pods/stopper",
            LONG,
            |p| !p["metadata"]["deletionTimestamp"].is_null(),
        )
        .await?;
    std::fs::write(rig.file("seen-terminating"), "seen")?;
    eventually("the pod gone", LONG, || async {
        let gone = rig
            .cloud
            .get("/api/v1/namespaces/default/pods/stopper")
            .await?
            .is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    assert!(
        read(&rig.file("requests")).contains("GET /cgi-bin/quit"),
        "the preStop request reached the server"
    );
    assert_eq!(read(&rig.file("web-order")), "term-after-request\n");
    assert_eq!(read(&rig.file("sleep-order")), "term-after-mark\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn post_start_holds_the_pod_and_pre_stop_runs_before_sigterm_on_containerd() -> Result<()> {
    let Some(rig) = Rig::cri("cri-hooks").await? else {
        return Ok(());
    };
    post_start_holds_the_pod_and_pre_stop_runs_before_sigterm(rig).await
}

#[tokio::test(flavor = "multi_thread")]
async fn post_start_holds_the_pod_and_pre_stop_runs_before_sigterm_on_the_process_runtime(
) -> Result<()> {
    post_start_holds_the_pod_and_pre_stop_runs_before_sigterm(Rig::process("proc-hooks").await?)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_post_start_hook_is_an_event_and_a_restart_on_containerd() -> Result<()> {
    let Some(rig) = Rig::cri("cri-hook-fail").await? else {
        return Ok(());
    };
    a_failing_post_start_hook_is_an_event_and_a_restart(rig).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_post_start_hook_is_an_event_and_a_restart_on_the_process_runtime() -> Result<()>
{
    a_failing_post_start_hook_is_an_event_and_a_restart(Rig::process("proc-hook-fail").await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_stop_http_get_and_sleep_run_before_sigterm_on_containerd() -> Result<()> {
    let Some(rig) = Rig::cri("cri-hook-stop").await? else {
        return Ok(());
    };
    pre_stop_http_get_and_sleep_run_before_sigterm(rig).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pre_stop_http_get_and_sleep_run_before_sigterm_on_the_process_runtime() -> Result<()> {
    pre_stop_http_get_and_sleep_run_before_sigterm(Rig::process("proc-hook-stop").await?).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_of_a_tcp_socket_hook_or_a_hook_on_an_init_container_gets_a_422() -> Result<()>
{
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let tcp = dir.path().join("tcp.yaml");
    std::fs::write(
        &tcp,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tcp\nspec:\n  containers:\n  - name: app\n    image: busybox\n    lifecycle:\n      preStop:\n        tcpSocket:\n          port: 80\n",
    )?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", tcp.to_str().unwrap_or_default()])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.containers[0].lifecycle.preStop.tcpSocket: Forbidden: tcpSocket hooks are not run"),
        "{out}"
    );
    let init = dir.path().join("init.yaml");
    std::fs::write(
        &init,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: init\nspec:\n  initContainers:\n  - name: flash\n    image: busybox\n    lifecycle:\n      postStart:\n        exec:\n          command: [\"true\"]\n  containers:\n  - name: app\n    image: busybox\n",
    )?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", init.to_str().unwrap_or_default()])?;
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.initContainers[0].lifecycle: Forbidden: may not be set for init containers without restartPolicy=Always"),
        "{out}"
    );
    Ok(())
}
