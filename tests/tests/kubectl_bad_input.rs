//! What kubectl 1.32 says about input the server refuses (issue #10, "Small but real"): a
//! manifest of a kind the server does not serve gets kubectl's usual "no matches for kind",
//! not "failed to download openapi" (kubectl falls back to `/openapi/v2` for such kinds), and
//! bad query parameters come back as Kubernetes' 400s.

use skerry_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_names_an_unserved_kind_and_still_applies_served_ones() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let widget = dir.path().join("widget.yaml");
    std::fs::write(
        &widget,
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: 3\n",
    )?;
    let widget = widget.to_str().unwrap_or_default();
    for verb in ["apply", "create"] {
        let (ok, out) = cloud.kubectl(&[verb, "-f", widget])?;
        assert!(!ok, "kubectl {verb} of an unserved kind succeeded: {out}");
        assert!(
            out.contains(r#"no matches for kind "Widget" in version "example.com/v1""#),
            "kubectl {verb}: {out}"
        );
        assert!(!out.contains("failed to download openapi"), "{verb}: {out}");
    }

    // Served kinds, in the same manifest as the unserved one and alone, are still applied
    // (client-side apply and server-side apply).
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: edge\n",
    )?;
    let config = config.to_str().unwrap_or_default();
    let (ok, out) = cloud.kubectl(&["apply", "-f", config])?;
    assert!(ok, "{out}");
    let (ok, out) = cloud.kubectl(&["apply", "--server-side", "-f", config])?;
    assert!(ok, "{out}");
    let (ok, out) = cloud.kubectl(&[
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.mode}",
    ])?;
    assert!(ok && out == "edge", "{out}");
    // kubectl's client-side validation still rejects an unknown field of a served kind.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\nbogus: 1\n",
    )?;
    let (ok, out) = cloud.kubectl(&["apply", "-f", bad.to_str().unwrap_or_default()])?;
    assert!(!ok, "{out}");
    assert!(out.contains("bogus"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_shows_the_servers_400_for_bad_query_parameters() -> anyhow::Result<()> {
    let cloud = Cloud::start(CloudOptions::default()).await?;
    let (ok, out) = cloud.kubectl(&["get", "pods", "--field-selector", "metadata.name===x"])?;
    assert!(!ok, "{out}");
    assert!(out.contains("Error from server (BadRequest)"), "{out}");
    assert!(out.contains("unescaped character in value"), "{out}");

    let (ok, out) = cloud.kubectl(&["get", "--raw", "/api/v1/pods?resourceVersion=abc"])?;
    assert!(!ok, "{out}");
    assert!(out.contains("invalid resource version"), "{out}");

    let (ok, out) = cloud.kubectl(&["get", "--raw", "/api/v1/pods?continue=junk!"])?;
    assert!(!ok, "{out}");
    assert!(out.contains("continue key is not valid"), "{out}");
    Ok(())
}
