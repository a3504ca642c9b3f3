//! How far one pass moves a rollout: RollingUpdate within `maxSurge`/`maxUnavailable`,
//! Recreate (old ReplicaSets to 0 before the new one grows), and scaling a Deployment whose
//! `spec.replicas` changed. The sizing rules are pure functions, tested without a store.

use super::*;

/// A `maxSurge`/`maxUnavailable` bound, `25%` when unset (the API's default).
pub(super) fn int_or_percent(v: Option<&IntOrString>) -> IntOrString {
    v.cloned()
        .unwrap_or_else(|| IntOrString::String("25%".into()))
}

/// `(maxSurge, maxUnavailable)` of a rolling Deployment resolved against `spec.replicas`:
/// surge rounds up, unavailability down, and both 0 becomes an unavailability of 1 (upstream's
/// `ResolveFenceposts`).
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let replicas = replicas_of(d);
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref()?.rolling_update.as_ref());
    let surge = scaled_value(
        &int_or_percent(ru.and_then(|r| r.max_surge.as_ref())),
        replicas,
        true,
    )
    .unwrap_or(0);
    let unavailable = scaled_value(
        &int_or_percent(ru.and_then(|r| r.max_unavailable.as_ref())),
        replicas,
        false,
    )
    .unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// How many pods above `spec.replicas` a rollout may run (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    if is_rolling(d) {
        fenceposts(d).0
    } else {
        0
    }
}

/// How many of `spec.replicas` may be unavailable during a rollout (0 for Recreate).
pub fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = replicas_of(d);
    if !is_rolling(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// The size of the new ReplicaSet of a rolling update in this pass: it grows by what keeps the
/// sum of all ReplicaSets' `spec.replicas` (`total`) within `replicas + maxSurge`, up to
/// `replicas`. Upstream's `NewRSNewReplicas`.
pub fn rolling_new_replicas(replicas: i32, surge: i32, total: i32, new: i32) -> i32 {
    let max_total = replicas + surge;
    if total >= max_total {
        return new;
    }
    new + (max_total - total).min(replicas - new).max(0)
}

/// One ReplicaSet as the rollout arithmetic sees it: `spec.replicas` and
/// `status.availableReplicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

pub(super) fn sizes_of(rs: &Rs) -> Sizes {
    Sizes {
        replicas: replicas_of(&rs.t),
        available: rs_status(&rs.t).available_replicas.unwrap_or(0),
    }
}

/// The new sizes of the old ReplicaSets (`old`, oldest first) in one pass of a rolling update:
/// first the unhealthy replicas go, then available ones as long as `replicas -
/// maxUnavailable` pods stay available across old and `new` (upstream's
/// `reconcileOldReplicaSets`).
pub fn scale_down_old(replicas: i32, unavailable: i32, new: Sizes, old: &[Sizes]) -> Vec<i32> {
    let mut sizes: Vec<i32> = old.iter().map(|s| s.replicas).collect();
    let old_pods: i32 = sizes.iter().sum();
    if old_pods == 0 {
        return sizes;
    }
    let all_pods = old_pods + new.replicas;
    let min_available = replicas - unavailable;
    let new_unavailable = new.replicas - new.available;
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return sizes;
    }
    // Unhealthy replicas first: removing them costs no availability.
    let mut cleaned = 0;
    for (size, s) in sizes.iter_mut().zip(old) {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = *size - s.available;
        if *size == 0 || unhealthy <= 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - cleaned);
        *size -= n;
        cleaned += n;
    }
    // Then as far as availability allows.
    let available: i32 = old.iter().map(|s| s.available).sum::<i32>() + new.available;
    if available <= min_available {
        return sizes;
    }
    let budget = available - min_available;
    let mut scaled = 0;
    for size in sizes.iter_mut() {
        if scaled >= budget {
            break;
        }
        if *size == 0 {
            continue;
        }
        let n = (*size).min(budget - scaled);
        *size -= n;
        scaled += n;
    }
    sizes
}

/// The sizes of the active ReplicaSets after `spec.replicas` changed (a scaling event), the
/// simplification of upstream's proportional scaling described in the module docs. `active`
/// is oldest first and holds `new` (its index) if there is a new ReplicaSet; `allowed` is
/// `replicas + maxSurge` for a rolling update.
pub fn scale_plan(active: &[i32], new: Option<usize>, allowed: i32) -> Vec<i32> {
    let mut sizes = active.to_vec();
    let total: i32 = sizes.iter().sum();
    let mut delta = allowed - total;
    if delta > 0 {
        let target = new.unwrap_or(sizes.len().saturating_sub(1));
        if let Some(s) = sizes.get_mut(target) {
            *s += delta;
        }
    } else {
        let order: Vec<usize> = (0..sizes.len())
            .filter(|i| Some(*i) != new)
            .chain(new)
            .collect();
        for i in order {
            if delta >= 0 {
                break;
            }
            let n = sizes[i].min(-delta);
            sizes[i] -= n;
            delta += n;
        }
    }
    sizes
}

impl DeploymentController {
    /// Whether `spec.replicas` differs from what an active ReplicaSet was last sized for.
    pub(super) fn is_scaling_event(ro: &Rollout) -> bool {
        let want = replicas_of(&ro.d.t).to_string();
        ro.all().iter().any(|rs| {
            replicas_of(&rs.t) > 0 && rs.annotation(DESIRED_REPLICAS).is_some_and(|a| a != want)
        })
    }

    /// Upstream's `scale`: resizes the active ReplicaSets after `spec.replicas` changed.
    pub(super) async fn scale_to_spec(&self, ro: &mut Rollout) -> Result<(), ControllerError> {
        let d = ro.d.clone();
        let replicas = replicas_of(&d.t);
        let new_uid = ro.new.as_ref().map(|n| uid(&n.t.metadata).to_string());
        let saturated = ro.new.as_ref().is_some_and(|n| {
            n.annotation(DESIRED_REPLICAS) == Some(replicas.to_string().as_str())
                && rs_status(&n.t).available_replicas.unwrap_or(0) == replicas
                && replicas_of(&n.t) == replicas
        });
        // Oldest first, the new one last.
        let mut all: Vec<Rs> = ro.old.drain(..).chain(ro.new.take()).collect();
        let is_new = |rs: &Rs| new_uid.as_deref() == Some(uid(&rs.t.metadata));
        let active: Vec<usize> = (0..all.len())
            .filter(|i| replicas_of(&all[*i].t) > 0)
            .collect();
        let sizes: Vec<(usize, i32)> = if active.len() <= 1 {
            // One active ReplicaSet (or none: the new one, else the newest) takes it all.
            let target = active
                .first()
                .copied()
                .or_else(|| all.iter().position(is_new))
                .or(all.len().checked_sub(1));
            target.map(|i| vec![(i, replicas)]).unwrap_or_default()
        } else if saturated {
            active
                .iter()
                .map(|&i| (i, if is_new(&all[i]) { replicas } else { 0 }))
                .collect()
        } else if is_rolling(&d.t) {
            let new_index = active.iter().position(|&i| is_new(&all[i]));
            let current: Vec<i32> = active.iter().map(|&i| replicas_of(&all[i].t)).collect();
            let plan = scale_plan(&current, new_index, replicas + max_surge(&d.t));
            active.iter().copied().zip(plan).collect()
        } else {
            vec![]
        };
        let mut result = Ok(());
        for (i, size) in sizes {
            match self.scale(&d, &all[i], size).await {
                Ok((_, written)) => all[i] = written,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        for rs in all {
            if is_new(&rs) {
                ro.new = Some(rs);
            } else {
                ro.old.push(rs);
            }
        }
        result
    }

    pub(super) async fn rollout_rolling(
        &self,
        d: Obj<Deployment>,
        owned: Vec<Rs>,
    ) -> Result<Requeue, ControllerError> {
        let mut ro = self.split(d, owned, true).await?;
        let d = ro.d.clone();
        let replicas = replicas_of(&d.t);
        let total: i32 = ro.all().iter().map(|rs| replicas_of(&rs.t)).sum();
        if let Some(new) = ro.new.clone() {
            let current = replicas_of(&new.t);
            let target = if current > replicas {
                replicas
            } else {
                rolling_new_replicas(replicas, max_surge(&d.t), total, current)
            };
            let (scaled, written) = self.scale(&d, &new, target).await?;
            ro.new = Some(written);
            if scaled {
                return self.sync_rollout_status(&mut ro).await;
            }
        }
        let new_sizes = ro.new.as_ref().map_or(
            Sizes {
                replicas: 0,
                available: 0,
            },
            sizes_of,
        );
        let old_sizes: Vec<Sizes> = ro.old.iter().map(sizes_of).collect();
        let targets = scale_down_old(replicas, max_unavailable(&d.t), new_sizes, &old_sizes);
        let mut scaled_down = false;
        for (rs, size) in ro.old.iter_mut().zip(targets) {
            if size != replicas_of(&rs.t) {
                let (scaled, written) = self.scale(&d, rs, size).await?;
                scaled_down |= scaled;
                *rs = written;
            }
        }
        if scaled_down {
            return self.sync_rollout_status(&mut ro).await;
        }
        let new = ro.new.as_ref().map(|n| &n.t);
        let status = calculate_status(&d.t, &ro.all_typed(), new, now_seconds());
        if deployment_complete(&d.t, &status) {
            self.cleanup(&ro).await?;
        }
        self.sync_rollout_status(&mut ro).await
    }

    pub(super) async fn rollout_recreate(
        &self,
        d: Obj<Deployment>,
        owned: Vec<Rs>,
    ) -> Result<Requeue, ControllerError> {
        let mut ro = self.split(d, owned, false).await?;
        let d = ro.d.clone();
        let mut scaled_down = false;
        for rs in ro.old.iter_mut().filter(|rs| replicas_of(&rs.t) > 0) {
            let (scaled, written) = self.scale(&d, rs, 0).await?;
            scaled_down |= scaled;
            *rs = written;
        }
        if scaled_down {
            return self.sync_rollout_status(&mut ro).await;
        }
        // Wait until no pod of an old ReplicaSet is left, terminating ones included.
        let old_uids: Vec<&str> = ro.old.iter().map(|rs| uid(&rs.t.metadata)).collect();
        let mut old_running = ro.old.iter().any(|rs| rs_status(&rs.t).replicas > 0);
        if !old_running {
            let pods = old_uids
                .iter()
                .flat_map(|uid| self.informers.pods.controlled_by(uid));
            for p in pods {
                let pod: Pod = typed(&p)?;
                if !matches!(owned::phase(&pod), "Succeeded" | "Failed") {
                    old_running = true;
                    break;
                }
            }
        }
        if old_running {
            return self.sync_rollout_status(&mut ro).await;
        }
        if ro.new.is_none() {
            let owned: Vec<Rs> = ro.old.clone();
            ro = self.split(d.clone(), owned, true).await?;
        }
        let d = ro.d.clone();
        if let Some(new) = ro.new.clone() {
            let (_, written) = self.scale(&d, &new, replicas_of(&d.t)).await?;
            ro.new = Some(written);
        }
        let new = ro.new.as_ref().map(|n| &n.t);
        let status = calculate_status(&d.t, &ro.all_typed(), new, now_seconds());
        if deployment_complete(&d.t, &status) {
            self.cleanup(&ro).await?;
        }
        self.sync_rollout_status(&mut ro).await
    }
}
