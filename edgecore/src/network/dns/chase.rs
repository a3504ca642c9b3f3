//! ExternalName CNAMEs followed to their target, as CoreDNS follows them: a pod's stub resolver
//! (glibc, musl, busybox) does not chase a CNAME whose target has no records in the answer, so
//! an A query for `ext.<ns>.svc.<domain>` must carry the target's A records too.
//!
//! Built on hickory's chained zone handlers: this handler sits after the cluster zone in the
//! catalog; it never answers on its own ([`LookupControlFlow::Skip`]) and is *consulted* with
//! the zone's answer, which it extends when that answer ends in a CNAME out of the zone. When
//! the target cannot be resolved (the upstream is down, or the name does not exist) the CNAME
//! alone is answered, as before.

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::{LowerName, RData, Record, RecordType, TSigResponseContext};
use hickory_server::resolver::Resolver;
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, LookupControlFlow, LookupOptions, LookupRecords, ZoneHandler, ZoneType,
};
use std::time::Duration;

/// Follows out-of-zone CNAMEs of the zone `origin` through `resolver`.
pub(super) struct ChaseExternal {
    pub(super) origin: LowerName,
    pub(super) resolver: Resolver<TokioRuntimeProvider>,
    pub(super) timeout: Duration,
}

#[async_trait::async_trait]
impl ZoneHandler for ChaseExternal {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        _name: &LowerName,
        _rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Skip
    }

    async fn search(
        &self,
        _request: &Request,
        _lookup_options: LookupOptions,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        (LookupControlFlow::Skip, None)
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Skip
    }

    async fn consult(
        &self,
        _name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        _lookup_options: LookupOptions,
        last_result: LookupControlFlow<AuthLookup>,
    ) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        if matches!(rtype, RecordType::CNAME | RecordType::ANY) {
            return (last_result, None);
        }
        let lookup = match last_result {
            LookupControlFlow::Continue(Ok(lookup)) => lookup,
            other => return (other, None),
        };
        let target = match lookup.iter().last() {
            Some(Record {
                data: RData::CNAME(target),
                ..
            }) if !self.origin.zone_of(&LowerName::new(&target.0)) => target.0.clone(),
            _ => return (LookupControlFlow::Continue(Ok(lookup)), None),
        };
        let found = tokio::time::timeout(self.timeout, self.resolver.lookup(target, rtype)).await;
        let Ok(Ok(found)) = found else {
            return (LookupControlFlow::Continue(Ok(lookup)), None);
        };
        let mut answers: Vec<Record> = lookup.iter().cloned().collect();
        answers.extend(found.answers().iter().cloned());
        (
            LookupControlFlow::Continue(Ok(AuthLookup::answers(
                LookupRecords::Section(answers),
                None,
            ))),
            None,
        )
    }
}
