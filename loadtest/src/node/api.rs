//! The cluster-controller HTTP API of the storage node library, in its three generations: which
//! paths a node serves for readiness, the distributor role, its activation and the storage gauge.
//! writer-election's promotion presets name the same paths; the demo node serves one API at a
//! time, so a config written for another generation fails against it as it would in production.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Api {
    /// MicroStream: activation in two calls, `start` then `finish` until `true`.
    #[default]
    Microstream,
    /// Older MicroStream releases: one activation call that promotes.
    MicrostreamLegacy,
    /// Eclipse DataGrid: as MicroStream, under its own controller path and prefixes.
    EclipseDatagrid,
    /// Eclipse DataGrid with the prefixes dropped: `/eclipse-datagrid/distributor` etc.
    EclipseDatagridUnprefixed,
}

impl Api {
    pub const ALL: [Api; 4] = [
        Api::Microstream,
        Api::MicrostreamLegacy,
        Api::EclipseDatagrid,
        Api::EclipseDatagridUnprefixed,
    ];

    /// The `--api` value (also writer-election's preset name).
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Microstream => "microstream",
            Api::MicrostreamLegacy => "microstream-legacy",
            Api::EclipseDatagrid => "eclipse-datagrid",
            Api::EclipseDatagridUnprefixed => "eclipse-datagrid-unprefixed",
        }
    }

    fn controller(self) -> &'static str {
        match self {
            Api::Microstream | Api::MicrostreamLegacy => "/microstream-cluster-controller",
            Api::EclipseDatagrid => "/eclipse-datagrid-cluster-controller",
            Api::EclipseDatagridUnprefixed => "/eclipse-datagrid",
        }
    }

    fn prefix(self) -> Option<&'static str> {
        match self {
            Api::Microstream | Api::MicrostreamLegacy => Some("microstream"),
            Api::EclipseDatagrid => Some("eclipse-datagrid"),
            Api::EclipseDatagridUnprefixed => None,
        }
    }

    fn path(self, tail: &str) -> String {
        match self.prefix() {
            Some(p) => format!("{}/{p}-{tail}", self.controller()),
            None => format!("{}/{tail}", self.controller()),
        }
    }

    /// Liveness: 200 while the process serves.
    pub fn health_path(self) -> String {
        self.path("health")
    }

    /// Readiness: 200, or 500 when not ready (as the library answers).
    pub fn ready_path(self) -> String {
        self.path("health/ready")
    }

    /// GET: `true` / `false` (text/plain): is this node the distributor (the writer)?
    pub fn distributor_path(self) -> String {
        self.path("distributor")
    }

    /// POST, legacy only: promotes in one call.
    pub fn activate_path(self) -> String {
        self.path("activate-distributor")
    }

    /// POST: begins the activation (two-call APIs).
    pub fn start_path(self) -> String {
        self.path("activate-distributor/start")
    }

    /// POST: `false` until the activation is complete, then `true` (two-call APIs).
    pub fn finish_path(self) -> String {
        self.path("activate-distributor/finish")
    }

    /// GET: Prometheus text with the gauge `cluster_storage_used_bytes`.
    pub fn storage_bytes_path(self) -> String {
        self.path("storage-bytes")
    }

    /// The response header, set to `true`, with which a node that is not the distributor
    /// refuses a write: `Microstream-NAD` until the library's newest line renamed it
    /// `StorageNode-NAD` (together with dropping the path prefixes).
    pub fn nad_header(self) -> &'static str {
        match self {
            Api::EclipseDatagridUnprefixed => "storagenode-nad",
            Api::Microstream | Api::MicrostreamLegacy | Api::EclipseDatagrid => "microstream-nad",
        }
    }

    /// Whether activation takes `start` + `finish` (else the single legacy call).
    pub fn two_step_activation(self) -> bool {
        !matches!(self, Api::MicrostreamLegacy)
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn paths_of_each_generation() {
        let m = Api::Microstream;
        assert_eq!(
            m.ready_path(),
            "/microstream-cluster-controller/microstream-health/ready"
        );
        assert_eq!(
            m.distributor_path(),
            "/microstream-cluster-controller/microstream-distributor"
        );
        assert_eq!(
            m.start_path(),
            "/microstream-cluster-controller/microstream-activate-distributor/start"
        );
        assert_eq!(
            m.finish_path(),
            "/microstream-cluster-controller/microstream-activate-distributor/finish"
        );
        assert_eq!(
            m.storage_bytes_path(),
            "/microstream-cluster-controller/microstream-storage-bytes"
        );
        assert_eq!(
            Api::MicrostreamLegacy.activate_path(),
            "/microstream-cluster-controller/microstream-activate-distributor"
        );
        let e = Api::EclipseDatagrid;
        assert_eq!(
            e.ready_path(),
            "/eclipse-datagrid-cluster-controller/eclipse-datagrid-health/ready"
        );
        assert_eq!(
            e.distributor_path(),
            "/eclipse-datagrid-cluster-controller/eclipse-datagrid-distributor"
        );
        assert_eq!(
            e.finish_path(),
            "/eclipse-datagrid-cluster-controller/eclipse-datagrid-activate-distributor/finish"
        );
        assert_eq!(
            e.storage_bytes_path(),
            "/eclipse-datagrid-cluster-controller/eclipse-datagrid-storage-bytes"
        );
        let u = Api::EclipseDatagridUnprefixed;
        assert_eq!(u.ready_path(), "/eclipse-datagrid/health/ready");
        assert_eq!(u.distributor_path(), "/eclipse-datagrid/distributor");
        assert_eq!(
            u.start_path(),
            "/eclipse-datagrid/activate-distributor/start"
        );
        assert!(m.two_step_activation() && e.two_step_activation() && u.two_step_activation());
        assert!(!Api::MicrostreamLegacy.two_step_activation());
    }

    #[test]
    fn flag_values_are_the_preset_names() {
        for api in Api::ALL {
            let parsed = Api::from_str(api.as_str(), false).unwrap();
            assert_eq!(parsed, api);
            assert_eq!(api.to_string(), api.as_str());
        }
        assert_eq!(Api::default(), Api::Microstream);
    }
}
