//! The schema tables, one file per API group and version (core/v1's volume sources in a file
//! of their own), as `schema_gen.py` writes them. Only the `message!` impls matter; the
//! modules exist so that each file stays readable.

mod apps_v1;
mod autoscaling_v1;
mod batch_v1;
mod core_v1;
mod core_v1_volumes;
mod meta_v1;
