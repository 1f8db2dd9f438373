//! HTTP routes as the config writes them (`"GET /vending/{machine}/state"`)
//! and how a request finds its route: pure, for `config check` (which must
//! find two routes one request could match before start) and for the HTTP
//! trigger.
//!
//! A small matcher of our own (literal and `{name}` segments), not axum's
//! router: axum's router panics on a clash between two routes.

/// How a route runs its function (Lambda's invocation types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invocation {
    /// The client waits for the function's answer (`respond`), sent once
    /// its effects are committed.
    #[default]
    RequestResponse,
    /// The client gets 202 once the request is durably queued; the function
    /// runs after, with retries and the dead-letter queue as for a message.
    Event,
}

/// Methods a route may name; `ANY` takes every one.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// One path segment of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A parsed `http` trigger: a method (or any) and a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `None`: any method.
    method: Option<String>,
    segments: Vec<Segment>,
}

impl Route {
    /// Parses `"GET /vending/{machine}/state"`; the error is for `config check`.
    pub fn parse(text: &str) -> Result<Route, String> {
        let expected = "expected a method and a path, as in \"GET /vending/{machine}/state\"";
        let mut words = text.split_whitespace();
        let (Some(method), Some(path), None) = (words.next(), words.next(), words.next()) else {
            return Err(expected.into());
        };
        let method = match method {
            "ANY" => None,
            m if METHODS.contains(&m) => Some(m.to_owned()),
            m => {
                return Err(format!(
                    "unknown method {m:?}: expected one of {}, or ANY",
                    METHODS.join(", ")
                ))
            }
        };
        let Some(rest) = path.strip_prefix('/') else {
            return Err(format!("the path {path:?} must start with '/'"));
        };
        let mut segments = Vec::new();
        let mut names = Vec::new();
        for part in rest.split('/').filter(|p| !p.is_empty()) {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "path parameter {part:?}: a name of letters, digits and '_'"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("path parameter {{{name}}} appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_owned()));
            } else if part.contains(['{', '}', '?', '#', '%']) {
                return Err(format!(
                    "path segment {part:?}: a literal, or a whole segment {{name}}"
                ));
            } else {
                segments.push(Segment::Literal(part.to_owned()));
            }
        }
        Ok(Route { method, segments })
    }

    /// Whether one request could match both routes: the methods overlap,
    /// and the paths have the same length with no two literals differing.
    pub fn clashes_with(&self, other: &Route) -> bool {
        let methods = match (&self.method, &other.method) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        methods
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    _ => true,
                })
    }

    /// The path parameters if `path` matches (the method aside).
    fn match_path(&self, path: &str) -> Option<Vec<(String, String)>> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_owned())),
            }
        }
        Some(params)
    }

    fn allows(&self, method: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
    }
}

/// What a request matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<T> {
    Route(T, Vec<(String, String)>),
    /// The path exists, for these methods only.
    WrongMethod(Vec<String>),
    NotFound,
}

/// Every function's routes, and what each leads to.
#[derive(Debug, Clone)]
pub struct Routes<T> {
    routes: Vec<(Route, T)>,
}

impl<T: Clone> Routes<T> {
    pub fn new(routes: Vec<(Route, T)>) -> Self {
        Routes { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route a request takes; validation has ruled out two matching.
    pub fn find(&self, method: &str, path: &str) -> Matched<T> {
        let mut allowed = Vec::new();
        for (route, target) in &self.routes {
            let Some(params) = route.match_path(path) else {
                continue;
            };
            if route.allows(method) {
                return Matched::Route(target.clone(), params);
            }
            allowed.extend(route.method.clone());
        }
        if allowed.is_empty() {
            Matched::NotFound
        } else {
            Matched::WrongMethod(allowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn route(text: &str) -> Route {
        Route::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn routes_parse_and_bad_ones_say_why() {
        route("GET /vending/{machine}/state");
        route("ANY /");
        route("POST /telemetry/");
        for (bad, says) in [
            ("/vending", "expected a method and a path"),
            ("FETCH /a", "unknown method"),
            ("GET vending", "must start with '/'"),
            ("GET /a/{}", "path parameter"),
            ("GET /a/{x}/{x}", "appears twice"),
            ("GET /a/x{y}", "a whole segment"),
        ] {
            let error = Route::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn requests_find_their_route_its_parameters_or_why_not() {
        let routes = Routes::new(vec![
            (route("GET /vending/{machine}/state"), 0),
            (route("POST /vending/{machine}/state"), 1),
            (route("ANY /hello"), 2),
        ]);
        assert_eq!(
            routes.find("GET", "/vending/vm-17/state"),
            Matched::Route(0, vec![("machine".into(), "vm-17".into())])
        );
        assert_eq!(
            routes.find("POST", "/vending/vm-17/state/"),
            Matched::Route(1, vec![("machine".into(), "vm-17".into())])
        );
        assert_eq!(
            routes.find("DELETE", "/vending/vm-17/state"),
            Matched::WrongMethod(vec!["GET".into(), "POST".into()])
        );
        assert_eq!(routes.find("PUT", "/hello"), Matched::Route(2, vec![]));
        assert_eq!(routes.find("GET", "/vending/vm-17"), Matched::NotFound);
    }

    #[test]
    fn routes_one_request_could_match_clash() {
        let clash = |a: &str, b: &str| route(a).clashes_with(&route(b));
        assert!(clash("GET /a/{x}", "GET /a/{y}"));
        assert!(clash("GET /a/{x}", "ANY /a/b"));
        assert!(!clash("GET /a/{x}", "POST /a/{x}"));
        assert!(!clash("GET /a/b", "GET /a/c"));
        assert!(!clash("GET /a/{x}", "GET /a/{x}/y"));
    }
}
