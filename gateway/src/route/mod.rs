//! Routing: which route a (normalised) request belongs to.
//!
//! A route matches a path prefix at a segment boundary (`/api/products` matches
//! `/api/products` and `/api/products/123`, never `/api/productsx`), optionally a host and a
//! set of methods; the longest matching prefix wins, and among equal prefixes the first
//! declared whose host and method match.

pub mod path;

use http::Method;

/// What a route matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The path prefix, normalised, without a trailing slash (except `/` itself).
    pub prefix: String,
    /// The host (without port) to match, if any; `*.example.com` matches any subdomain.
    pub host: Option<String>,
    /// The methods to match; empty matches any.
    pub methods: Vec<Method>,
}

impl Match {
    /// Whether `path` is under the prefix, at a segment boundary.
    pub fn covers(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }

    fn host_matches(&self, host: Option<&str>) -> bool {
        let Some(wanted) = &self.host else {
            return true;
        };
        let Some(host) = host else {
            return false;
        };
        let host = host.split(':').next().unwrap_or(host);
        match wanted.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => host.eq_ignore_ascii_case(wanted),
        }
    }
}

/// The routes, ordered for matching.
#[derive(Debug)]
pub struct Router<T> {
    routes: Vec<(Match, T)>,
}

impl<T> Router<T> {
    /// A router over `routes`, in declaration order.
    pub fn new(routes: Vec<(Match, T)>) -> Self {
        let mut routes = routes;
        // A stable sort keeps declaration order among equal prefixes.
        routes.sort_by_key(|(m, _)| std::cmp::Reverse(m.prefix.len()));
        Router { routes }
    }

    /// The route for a request with this normalised `path`, `host` and `method`.
    pub fn find(&self, path: &str, host: Option<&str>, method: &Method) -> Option<&(Match, T)> {
        self.routes.iter().find(|(m, _)| {
            m.covers(path)
                && m.host_matches(host)
                && (m.methods.is_empty() || m.methods.contains(method))
        })
    }

    /// Every route, in matching order.
    pub fn routes(&self) -> impl Iterator<Item = &(Match, T)> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(prefix: &str) -> Match {
        Match {
            prefix: prefix.into(),
            host: None,
            methods: Vec::new(),
        }
    }

    fn router() -> Router<&'static str> {
        Router::new(vec![
            (route("/api"), "api"),
            (route("/api/products"), "products"),
            (route("/api/orders"), "orders"),
            (
                Match {
                    host: Some("*.shop.test".into()),
                    methods: vec![Method::GET],
                    ..route("/api/orders")
                },
                "shop-orders",
            ),
        ])
    }

    fn find(path: &str, host: Option<&str>, method: Method) -> Option<&'static str> {
        router().find(path, host, &method).map(|(_, t)| *t)
    }

    #[test]
    fn the_longest_prefix_wins_at_segment_boundaries() {
        assert_eq!(
            find("/api/products/123", None, Method::GET),
            Some("products")
        );
        assert_eq!(find("/api/products", None, Method::GET), Some("products"));
        assert_eq!(find("/api/productsx", None, Method::GET), Some("api"));
        assert_eq!(find("/apix", None, Method::GET), None);
        assert_eq!(find("/api/orders/1", None, Method::GET), Some("orders"));
    }

    #[test]
    fn host_and_method_narrow_a_route() {
        assert_eq!(
            find("/api/orders/1", Some("a.shop.test:8080"), Method::GET),
            Some("orders"),
            "the route without host was declared first"
        );
        let router = Router::new(vec![
            (
                Match {
                    host: Some("*.shop.test".into()),
                    methods: vec![Method::GET],
                    ..route("/api/orders")
                },
                "shop",
            ),
            (route("/api/orders"), "any"),
        ]);
        let find = |host, method| router.find("/api/orders", host, &method).map(|(_, t)| *t);
        assert_eq!(find(Some("a.shop.test"), Method::GET), Some("shop"));
        assert_eq!(find(Some("a.shop.test"), Method::POST), Some("any"));
        assert_eq!(find(Some("shop.test"), Method::GET), Some("any"));
        assert_eq!(find(None, Method::GET), Some("any"));
    }

    /// The non-empty segments of a path: the model of "under a prefix at a segment boundary"
    /// the router's string comparison must agree with.
    fn segments(path: &str) -> Vec<&str> {
        path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Path pieces a hostile client combines: dot segments, plain and encoded, encoded
    /// separators, and the names the prefixes are made of.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("ab"),
            Just(".."),
            Just("."),
            Just(""),
            Just("%2e%2e"),
            Just("%2E"),
            Just("%2F"),
            Just("a%2Fb"),
            Just("%61"),
            Just("%2e%2e%2f"),
        ]
    }

    proptest! {
        /// Whatever a client sends, the route chosen is the one with the longest prefix its
        /// normalised path is under, segment by segment (the first declared among equals), and
        /// none when no prefix covers it: no dot segment or encoding reaches a route the
        /// resolved path does not match.
        #[test]
        fn the_route_chosen_is_the_longest_prefix_the_normal_form_is_under(
            prefixes in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("ab")], 0..3),
                1..5,
            ),
            pieces in proptest::collection::vec(piece(), 0..7),
        ) {
            let prefixes: Vec<String> =
                prefixes.iter().map(|p| format!("/{}", p.join("/"))).collect();
            let router = Router::new(
                prefixes.iter().enumerate().map(|(i, p)| (route(p), i)).collect(),
            );
            let raw = format!("/{}", pieces.join("/"));
            let Ok(normal) = path::normalize(&raw) else { return Ok(()) };
            let expected = prefixes
                .iter()
                .enumerate()
                .filter(|(_, p)| segments(&normal).starts_with(&segments(p)))
                .max_by_key(|(i, p)| (segments(p).len(), std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            let chosen = router.find(&normal, None, &Method::GET).map(|(_, i)| *i);
            prop_assert_eq!(chosen, expected, "{} -> {} among {:?}", raw, normal, prefixes);
        }
    }
}
