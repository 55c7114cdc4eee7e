//! `GET /openapi.json`: the gateway's OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes by the same [`OpenApiRouter`] that registers their routes.
//!
//! Invariant: a route is in the document exactly when the router serves it; the test below reads
//! the routes from the axum router itself and compares both ways.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use super::router::api;
use super::state::AppState;

/// The document's fixed parts; the paths come from the handlers.
#[derive(OpenApi)]
#[openapi(info(
    title = "formstream gateway",
    description = "Forms, responses and flags of the caller's organisation. Every /v1 route takes the organisation's API key (`Authorization: Bearer <key>` or `x-api-key`); errors are RFC 9457 problem+json."
))]
pub(crate) struct ApiDoc;

/// What every /v1 operation shares: the API key, and its 401 and 503 problems. Applied once the
/// handlers' paths are in (a derive's `modifiers` run before).
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    formstream_core::api::PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "Problem",
                        ))))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in operations(item) {
                let responses = &mut operation.responses.responses;
                responses.insert(
                    "401".to_owned(),
                    RefOr::T(problem("Missing or invalid API key")),
                );
                responses.entry("503".to_owned()).or_insert_with(|| {
                    RefOr::T(problem(
                        "A view is still loading, or Kafka is unavailable (`Retry-After`)",
                    ))
                });
                operation.security =
                    Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
                        _,
                        _,
                        &str,
                    >("api_key", [])]);
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The document, as the router that serves the routes builds it.
pub fn document() -> Document {
    let router: OpenApiRouter<AppState> = api();
    let mut doc = router.into_openapi();
    Common.modify(&mut doc);
    doc
}

/// This document (OpenAPI 3.1), generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi_json() -> impl IntoResponse {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        document()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_owned())
    });
    ([(header::CONTENT_TYPE, "application/json")], JSON.as_str())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use regex::Regex;

    use super::super::router::served;
    use super::document;
    use crate::metrics::Metrics;

    fn text<'a>(capture: &regex::Captures<'a>, group: usize) -> &'a str {
        capture.get(group).map_or("", |m| m.as_str())
    }

    /// (method, path) of every route the gateway's axum router serves, read from the router itself
    /// (its `Debug`: route ids, their paths, and each method router's `Allow` list). HEAD is left
    /// out: axum answers it for every GET.
    fn served_routes() -> BTreeSet<(String, String)> {
        let router = format!("{:?}", served(Metrics::new(), 1024));
        // Only the routes, not the fallback router's catch-all.
        let routes = router.split("fallback_router:").next().unwrap_or_default();
        let allow = Regex::new(
            r#"RouteId\((\d+)\): MethodRouter\(MethodRouter \{.*?allow_header: Bytes\(b"([A-Z,]*)"\)"#,
        )
        .expect("regex");
        let path = Regex::new(r#"RouteId\((\d+)\): "([^"]+)""#).expect("regex");
        let paths: HashMap<&str, &str> = path
            .captures_iter(routes)
            .map(|c| (text(&c, 1), text(&c, 2)))
            .collect();
        let mut served = BTreeSet::new();
        let mut read = 0;
        for c in allow.captures_iter(routes) {
            let id = text(&c, 1);
            let path = paths
                .get(id)
                .unwrap_or_else(|| panic!("route {id} has no path in {routes}"));
            for method in text(&c, 2).split(',').filter(|m| *m != "HEAD") {
                served.insert((method.to_owned(), (*path).to_owned()));
            }
            read += 1;
        }
        assert_eq!(
            read,
            paths.len(),
            "every path's methods were read: {router}"
        );
        served
    }

    fn documented_routes() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(document()).expect("document serialises");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = BTreeSet::new();
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    documented.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        documented
    }

    #[test]
    fn the_document_lists_exactly_the_routes_the_router_serves() {
        let served = served_routes();
        let documented = documented_routes();
        assert!(
            served.contains(&("POST".to_owned(), "/v1/forms".to_owned())),
            "the router's routes were read: {served:?}"
        );
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let not_served: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && not_served.is_empty(),
            "served but not in /openapi.json: {undocumented:?}; in /openapi.json but not served: {not_served:?}"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_and_every_reference_resolves() {
        let doc = serde_json::to_value(document()).expect("document serialises");
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
        let json = doc.to_string();
        let reference = Regex::new(r##""\$ref":"#/components/schemas/([^"]+)""##).expect("regex");
        let mut seen = 0;
        for c in reference.captures_iter(&json) {
            let name = text(&c, 1);
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "#/components/schemas/{name} is referenced but not defined"
            );
            seen += 1;
        }
        assert!(seen > 10, "the operations reference their schemas ({seen})");
        // Every /v1 operation requires the API key and documents its 401.
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                if path.starts_with("/v1/") {
                    assert!(operation["security"].is_array(), "{method} {path}");
                    assert!(operation["responses"]["401"].is_object(), "{method} {path}");
                }
            }
        }
    }
}
