//! The live dashboard, `GET /dashboard` on the management API: a page
//! and its script, built into the binary so that a user installs nothing
//! and runs no build step, and so that the page always matches the API of
//! the gateway serving it.
//!
//! The page holds no data: its script reads the same JSON API the CLI uses
//! (`/v1/stats`, `/v1/functions`, `/v1/dead-letters`, `/v1/logs`) with the
//! bearer token the user gives in the URL's fragment, which the browser
//! never sends. So these files, and only these, are served on TCP without
//! the token ([`is_public`]).
//!
//! The one library is uPlot (MIT, `vendor/uplot/`, about 53 KB), for the
//! charts.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method};
use axum::response::Response;

/// One file of the page.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Every file, by the path it is served on.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/dashboard",
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("app.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("style.css"),
    },
    Asset {
        path: "/dashboard/uplot.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        path: "/dashboard/uplot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("vendor/uplot/uPlot.min.css"),
    },
];

/// Whether a request may skip the bearer token: a read of one of the
/// page's own files, which hold nothing of the gateway's. Compared as
/// given (no `..` resolved), so nothing else can pass for one.
pub fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && ASSETS.iter().any(|a| a.path == path)
}

/// A file as served. The policy lets the page run only its own scripts and
/// talk only to the gateway, so that a device's text shown on it (a topic,
/// a log line) cannot act even if some code path forgot to escape it; no
/// other site may frame it. Not cached: after an upgrade the page is the
/// new gateway's.
pub fn response(asset: &Asset) -> Response {
    let mut response = Response::new(Body::from(asset.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_of_the_pages_own_files_skip_the_token() {
        assert!(is_public(&Method::GET, "/dashboard"));
        assert!(is_public(&Method::HEAD, "/dashboard/app.js"));
        for path in [
            "/dashboard/",
            "/dashboard/../v1/stats",
            "/dashboard/app.js/../../metrics",
            "/v1/stats",
            "/metrics",
            "/dashboardx",
        ] {
            assert!(!is_public(&Method::GET, path), "{path}");
        }
        assert!(!is_public(&Method::POST, "/dashboard"));
    }

    #[test]
    fn the_page_names_only_files_that_are_served() {
        let page = ASSETS[0].body;
        for reference in page
            .split(['"', '\''])
            .filter(|s| s.starts_with("dashboard/"))
        {
            let path = format!("/{reference}");
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "index.html refers to {reference}, which is not served"
            );
        }
    }
}
