//! berth resources in tests: written as JSON, labelled with the test's id (so the
//! fixture deletes them), created through the kube client or through kubectl.

use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::cluster::{TEST_LABEL, TestCluster};
use crate::control_plane::Kubectl;

/// The API resource of a berth kind, and whether it is namespaced.
pub fn berth_resource(kind: &str) -> (ApiResource, bool) {
    let crd = berth::api::crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("berth has no kind {kind}"));
    let version = &crd.spec.versions[0].name;
    let resource = ApiResource {
        group: crd.spec.group.clone(),
        version: version.clone(),
        api_version: format!("{}/{version}", crd.spec.group),
        kind: kind.to_string(),
        plural: crd.spec.names.plural.clone(),
    };
    (resource, crd.spec.scope == "Namespaced")
}

/// `{"apiVersion": "berth.dev/v1alpha1", "kind": KIND, "metadata": {"name": NAME}, "spec": SPEC}`
pub fn berth(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": format!("{}/v1alpha1", berth::api::GROUP),
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// The message of a failed API call (kube client), or a panic when it succeeded.
#[track_caller]
pub fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected the apiserver to refuse, got {other:?}"),
    }
}

impl TestCluster {
    /// `object` with this test's label and, for namespaced kinds, this test's namespace.
    pub fn labelled(&self, mut object: Value) -> Value {
        let kind = object["kind"].as_str().expect("kind").to_string();
        let metadata = &mut object["metadata"];
        metadata["labels"][TEST_LABEL] = json!(self.id());
        if berth_resource(&kind).1 && metadata.get("namespace").is_none() {
            metadata["namespace"] = json!(self.namespace());
        }
        object
    }

    /// The dynamic API of `object`'s kind (in its namespace, if namespaced).
    pub fn api_for(&self, object: &Value) -> Api<DynamicObject> {
        let (resource, namespaced) = berth_resource(object["kind"].as_str().expect("kind"));
        match object["metadata"]["namespace"].as_str() {
            Some(ns) if namespaced => Api::namespaced_with(self.client(), ns, &resource),
            _ => Api::all_with(self.client(), &resource),
        }
    }

    /// Creates `object` (labelled) through the kube client.
    pub async fn create(&self, object: &Value) -> Result<DynamicObject, kube::Error> {
        let object = self.labelled(object.clone());
        let dynamic: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        self.api_for(&object)
            .create(&PostParams::default(), &dynamic)
            .await
    }

    /// `kubectl apply ARGS -f -` of `object` (labelled).
    pub fn kubectl_apply(&self, object: &Value, args: &[&str]) -> Kubectl {
        let mut all = vec!["apply"];
        all.extend_from_slice(args);
        all.extend(["-f", "-"]);
        self.kubectl_stdin(&all, &self.labelled(object.clone()).to_string())
    }

    /// Asserts that the apiserver refuses to create `object`, both through the kube
    /// client and through `kubectl apply`, with a message containing every fragment.
    pub async fn assert_rejected(&self, object: &Value, fragments: &[&str]) {
        let status = api_error(self.create(object).await);
        assert_eq!(status.code, 422, "{status:?}");
        assert_contains_all(&status.message, fragments, "the kube client's error");
        let stderr = self.kubectl_apply(object, &[]).fails();
        assert_contains_all(&stderr, fragments, "kubectl's error");
    }
}

#[track_caller]
pub fn assert_contains_all(text: &str, fragments: &[&str], what: &str) {
    for fragment in fragments {
        assert!(
            text.contains(fragment),
            "{what} does not mention {fragment:?}:\n{text}"
        );
    }
}
