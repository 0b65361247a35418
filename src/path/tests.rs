use proptest::prelude::*;

use super::*;
use crate::config::from_toml_str;
use crate::relay::Control;
use crate::route::RouteTable;

fn canon(p: &str) -> Result<String, PathError> {
    canonicalize(p, &PathRules::default()).map(|c| c.path)
}

fn keep() -> PathRules {
    PathRules {
        escaped_slashes: EscapedSlashes::Keep,
        ..PathRules::default()
    }
}

/// The table of issue #12: each of these reached a catch-all route with its raw path while
/// `/admin` required a cookie. Now each is refused or becomes a path the `/admin` route
/// serves.
#[test]
fn the_bypass_table() {
    assert_eq!(canon("/admin").as_deref(), Ok("/admin"));
    assert_eq!(canon("/x/../admin").as_deref(), Ok("/admin"));
    assert_eq!(canon("/./admin").as_deref(), Ok("/admin"));
    assert_eq!(canon("//admin").as_deref(), Ok("/admin"));
    assert_eq!(canon("/%61dmin").as_deref(), Ok("/admin"));
    assert_eq!(canon("/%2e%2e/admin"), Err(PathError::AboveRoot));
    // Kept for the backend, routed by the segment's name (`routing_form`).
    assert_eq!(canon("/admin;x").as_deref(), Ok("/admin;x"));
    assert_eq!(routing_form("/admin;x"), "/admin");
    assert_eq!(canon("/admin%2f.."), Err(PathError::EncodedSlash));
}

/// RFC 3986 §5.4.1 and §5.4.2 against the base `http://a/b/c/d;p?q`, as the merged paths
/// §5.2.2 builds (base directory + reference) before `remove_dot_segments`.
#[test]
fn rfc3986_section_5_4_examples() {
    let cases = [
        // §5.4.1 normal examples.
        ("/b/c/g", "/b/c/g"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/g/", "/b/c/g/"),
        ("/b/c/d;p", "/b/c/d;p"),
        ("/b/c/g;x", "/b/c/g;x"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/./", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../", "/b/"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/../..", "/"),
        ("/b/c/../../", "/"),
        ("/b/c/../../g", "/g"),
        // §5.4.2 abnormal examples.
        ("/./g", "/g"),
        ("/b/c/g.", "/b/c/g."),
        ("/b/c/.g", "/b/c/.g"),
        ("/b/c/g..", "/b/c/g.."),
        ("/b/c/..g", "/b/c/..g"),
        ("/b/c/./../g", "/b/g"),
        ("/b/c/./g/.", "/b/c/g/"),
        ("/b/c/g/./h", "/b/c/g/h"),
        ("/b/c/g/../h", "/b/c/h"),
        ("/b/c/g;x=1/./y", "/b/c/g;x=1/y"),
        ("/b/c/g;x=1/../y", "/b/c/y"),
    ];
    for (input, want) in cases {
        assert_eq!(canon(input).as_deref(), Ok(want), "{input}");
    }
    // §5.4.2 clamps `../` above the root (`../../../g` is `http://a/g`); a proxy refuses
    // instead: a client that climbs is probing, and clamping hides it.
    assert_eq!(canon("/b/c/../../../g"), Err(PathError::AboveRoot));
    assert_eq!(canon("/../g"), Err(PathError::AboveRoot));
}

#[test]
fn percent_encoding_is_normalised() {
    // Unreserved characters decoded, others uppercased, raw specials encoded.
    assert_eq!(canon("/%7euser/%41%2d%5f").as_deref(), Ok("/~user/A-_"));
    assert_eq!(canon("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
    assert_eq!(canon("/caf\u{e9}").as_deref(), Ok("/caf%C3%A9"));
    assert_eq!(canon("/a%20b").as_deref(), Ok("/a%20b"));
    assert_eq!(canon("/a\"{}|^`").as_deref(), Ok("/a%22%7B%7D%7C%5E%60"));
    assert_eq!(canon("/%3b/%3F%23%25").as_deref(), Ok("/%3B/%3F%23%25"));
    // Sub-delimiters, `:` and `@` keep their meaning raw.
    assert_eq!(canon("/a:b@c!$&'()*+,=").as_deref(), Ok("/a:b@c!$&'()*+,="));
    // `.` decoded is a dot segment.
    assert_eq!(canon("/a/%2E/b/.%2e/c").as_deref(), Ok("/a/c"));
}

#[test]
fn ambiguous_paths_are_refused() {
    use PathError::*;
    let cases = [
        ("*", NotAPath),
        ("", NotAPath),
        ("admin", NotAPath),
        ("/a%2Fb", EncodedSlash),
        ("/a%5cb", EncodedSlash),
        ("/a\\b", Backslash),
        ("/a%00", ControlByte),
        ("/a%1f", ControlByte),
        ("/a%7F", ControlByte),
        ("/a\tb", ControlByte),
        ("/a%", InvalidEscape),
        ("/a%4", InvalidEscape),
        ("/a%zz", InvalidEscape),
        ("/a%%41", InvalidEscape),
        ("/..;x/admin", DotSegmentWithParameters),
        ("/a/.;x/admin", DotSegmentWithParameters),
        ("/%2e%2e;/admin", DotSegmentWithParameters),
        ("/;x/admin", ParametersWithoutName),
    ];
    for (input, want) in cases {
        assert_eq!(canon(input), Err(want), "{input:?}");
    }
}

#[test]
fn slashes_merge_unless_kept() {
    assert_eq!(canon("//a///b//").as_deref(), Ok("/a/b/"));
    assert_eq!(canon("//").as_deref(), Ok("/"));
    let kept = PathRules {
        merge_slashes: false,
        ..PathRules::default()
    };
    let c = |p| canonicalize(p, &kept).map(|c| c.path);
    assert_eq!(c("//a///b//").as_deref(), Ok("//a///b//"));
    // RFC 3986 §5.2.4: an empty segment is a segment `..` can remove.
    assert_eq!(c("/a//../b").as_deref(), Ok("/a/b"));
}

#[test]
fn escaped_slashes_kept_are_data_but_must_not_change_the_route() {
    let c = canonicalize("/files/a%2fb%5c..", &keep()).unwrap();
    assert_eq!(c.path, "/files/a%2Fb%5C..");
    assert_eq!(c.slash_view.as_deref(), Some("/files/a/"));
    let c = canonicalize("/admin%2F..", &keep()).unwrap();
    assert_eq!(c.path, "/admin%2F..");
    assert_eq!(c.slash_view.as_deref(), Some("/"));
    assert_eq!(
        canonicalize("/a%2F..%2F..%2Fadmin", &keep()),
        Err(PathError::AboveRoot)
    );
    assert_eq!(canonicalize("/plain", &keep()).unwrap().slash_view, None);
    // Routed by its routing form (`/admin`), its slash view (`/admin;/..`, that is `/`) by
    // another route: refused, not routed to either (found by the property test below).
    let c = canonicalize("/%61dmin;%2F..", &keep()).unwrap();
    assert_eq!(c.path, "/admin;%2F..");
    assert_eq!(routing_form(&c.path), "/admin");
    assert_eq!(
        table().find_canonical(None, &c).map(|r| r.is_some()),
        Err(PathError::AmbiguousEscapedSlash)
    );
}

#[test]
fn the_rest_after_a_routing_prefix_keeps_parameters() {
    assert_eq!(
        after_routing_prefix("/chat;v=2/room", "/chat".len()),
        "/room"
    );
    assert_eq!(
        after_routing_prefix("/chat;v=2/room;a", "/chat/".len()),
        "room;a"
    );
    assert_eq!(after_routing_prefix("/chat;v=2", "/chat".len()), "");
    assert_eq!(after_routing_prefix("/chat/room", "/".len()), "chat/room");
    assert_eq!(after_routing_prefix("/chat/", "/chat".len()), "/");
    assert_eq!(after_routing_prefix("/chat/", "/chat/".len()), "");
    assert_eq!(after_routing_prefix("/a;1/b;2/c", "/a/b".len()), "/c");
}

fn table() -> RouteTable {
    table_of(&[("admin", "/admin"), ("files", "/files/"), ("all", "/")])
}

/// The routes of these (name, path) pairs, each to the same backend.
fn table_of(routes: &[(&str, &str)]) -> RouteTable {
    let mut text = String::from("[[listener]]\nlisten = \"127.0.0.1:0\"\n");
    for (name, path) in routes {
        text.push_str(&format!(
            "[[route]]\nname = \"{name}\"\npath = \"{path}\"\nbackends = [\"ws://127.0.0.1:1\"]\n"
        ));
    }
    let cfg = from_toml_str(&text).unwrap();
    RouteTable::new(&cfg.routes, &Control::default())
}

/// Pieces that make paths interesting to a router: names that are route prefixes, dot
/// segments plain and encoded, empty segments, parameters, escapes good and bad.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "/", "/", "admin", "files", "a", ".", "..", "%2e", "%2E%2e", "%61", "%61dmin", ";",
        ";x", "%2F", "%2f", "%5C", "\\", "%", "%4", "%00", "%41", "%c3%a9", "\u{e9}", "\"", "{",
        "~", "%7E", "?", "@", ":", "%3B", "ADMIN", "Files", "%20",
    ])
}

fn path_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
}

fn rules_strategy() -> impl Strategy<Value = PathRules> {
    (any::<bool>(), any::<bool>()).prop_map(|(merge_slashes, keep)| PathRules {
        merge_slashes,
        escaped_slashes: if keep {
            EscapedSlashes::Keep
        } else {
            EscapedSlashes::Refuse
        },
    })
}

proptest! {
    /// Canonical is a fixed point: the backend, given the canonical path, reads the same
    /// path the router did; and it is always a valid request target.
    #[test]
    fn canonical_is_idempotent(p in path_strategy(), rules in rules_strategy()) {
        if let Ok(c) = canonicalize(&p, &rules) {
            prop_assert_eq!(canonicalize(&c.path, &rules), Ok(c.clone()));
            prop_assert!(http::uri::PathAndQuery::try_from(c.path.as_str()).is_ok(), "{}", c.path);
            prop_assert!(!c.path.contains("//") || !rules.merge_slashes);
        }
    }

    /// Routing `p` and routing `canonical(p)` pick the same route: whatever the client
    /// wrote, the route is the one for the path the backend receives.
    #[test]
    fn routing_a_path_and_its_canonical_form_agree(p in path_strategy(), rules in rules_strategy()) {
        let t = table();
        let route = |p: &str| {
            canonicalize(p, &rules).and_then(|c| t.find_canonical(None, &c))
                .map(|r| r.map(|r| r.config.name.clone()))
        };
        if let Ok(c) = canonicalize(&p, &rules) {
            prop_assert_eq!(route(&p), route(&c.path));
            // Nothing that normalises to an `/admin` path reaches another route: it routes to
            // `/admin`, or (with kept escaped slashes whose reading as separators would route
            // it elsewhere) it is refused and reaches none.
            if routing_form(&c.path).starts_with("/admin/") || routing_form(&c.path) == "/admin" {
                let got = route(&p);
                let refused = c.slash_view.is_some() && got == Err(PathError::AmbiguousEscapedSlash);
                prop_assert!(got == Ok(Some("admin".to_string())) || refused, "{:?} for {:?}", got, c);
            }
            // Nor does one that a backend reading paths without case or trailing dots and
            // spaces takes for an `/admin` path: it routes to `/admin`, or it is refused.
            let form = routing_form(&c.path).into_owned();
            let read = folded(&form).unwrap_or(form);
            if read.starts_with("/admin/") || read == "/admin" {
                let got = route(&p);
                prop_assert!(
                    matches!(got, Ok(Some(ref n)) if n == "admin") || got.is_err(),
                    "{:?} for {:?}", got, c
                );
            }
        }
    }
}

/// A path that routes otherwise when read without letter case, or without a segment's
/// trailing dots and spaces (as Express, ASP.NET Core and IIS read paths), is refused: they
/// would serve `/ADMIN/users` as `/admin/users`, which the route without a path had let
/// through without the `/admin` route's policy.
#[test]
fn a_path_that_routes_otherwise_without_case_or_trailing_dots_is_refused() {
    let t = table();
    let route = |p: &str| {
        let c = canonicalize(p, &PathRules::default()).unwrap();
        t.find_canonical(None, &c)
            .map(|r| r.map(|r| r.config.name.clone()))
    };
    for ambiguous in [
        "/ADMIN/users",
        "/Admin",
        "/%41dmin/users",
        "/admin./users",
        "/admin.../users",
        "/admin%20/users",
        "/ADMIN%20./x",
        "/FILES/x",
        "/files./",
        // Letters past ASCII that lower-casers make ASCII: the Kelvin sign, a dotted capital
        // I, a long s (Java, JavaScript and Python read `/\u{212A}iosk` as `/kiosk`).
        "/adm%C4%B0n/x",
        "/adm%C4%B1n/x",
        "/file%C5%BF/x",
        // An NTFS stream suffix names the file or directory before it.
        "/admin::$DATA",
        "/admin::$INDEX_ALLOCATION/x",
        "/admin%3A%3A$DATA",
    ] {
        assert_eq!(
            route(ambiguous),
            Err(PathError::AmbiguousCase),
            "{ambiguous}"
        );
    }
    for (path, name) in [
        ("/admin/Users", "admin"),
        ("/admin/users./x", "admin"),
        ("/Other/Path", "all"),
        ("/files/Report.PDF", "files"),
        ("/...", "all"),
    ] {
        assert_eq!(route(path), Ok(Some(name.to_string())), "{path}");
    }
    let t = table_of(&[("kiosk", "/kiosk"), ("all", "/")]);
    let c = canonicalize("/%E2%84%AAiosk/x", &PathRules::default()).unwrap();
    assert_eq!(
        t.find_canonical(None, &c).map(|r| r.is_some()),
        Err(PathError::AmbiguousCase)
    );
    // A route's own path is read the same way: next to `/API`, `/api/x` is ambiguous.
    let t = table_of(&[("api", "/API"), ("all", "/")]);
    let c = canonicalize("/api/x", &PathRules::default()).unwrap();
    assert_eq!(
        t.find_canonical(None, &c).map(|r| r.is_some()),
        Err(PathError::AmbiguousCase)
    );
    let c = canonicalize("/API/x", &PathRules::default()).unwrap();
    assert_eq!(
        t.find_canonical(None, &c)
            .map(|r| r.map(|r| r.config.name.clone())),
        Ok(Some("api".to_string()))
    );
}
