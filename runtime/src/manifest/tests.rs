use super::*;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse(text, Path::new("app/skiff.toml"))
}

fn error(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

/// Where a manifest that does not parse is wrong, and what the message
/// says: `(line, column, message)`.
fn syntax(text: &str) -> (usize, usize, String) {
    match parse(text).unwrap_err() {
        ManifestError::Syntax {
            path,
            line,
            column,
            message,
        } => {
            assert_eq!(path, Path::new("app/skiff.toml"));
            (line, column, message)
        }
        other => panic!("not a syntax error: {other}"),
    }
}

/// The message for a manifest that parses but contradicts itself.
fn invalid(text: &str) -> String {
    match parse(text).unwrap_err() {
        ManifestError::Invalid { path, message } => {
            assert_eq!(path, Path::new("app/skiff.toml"));
            message
        }
        other => panic!("not a validation error: {other}"),
    }
}

#[test]
fn full_manifest_parses_with_defaults() {
    let m = parse(
        r#"
[app]
name = "shop"

[component.api]
source = "api.wasm"
route = "/api/..."
env = { MODE = "prod" }
files = [{ source = "static", destination = "/static" }]
allowed_outbound_hosts = ["https://pay.example.com"]
[component.api.limits]
memory = "32MiB"
timeout = "2s"

[component.web]
source = "web.wasm"
route = "/..."
"#,
    )
    .unwrap();
    assert_eq!(m.app.name.as_str(), "shop");
    assert_eq!(m.app.version, "0.0.0");
    let api = &m.component[&ComponentName::try_from("api".to_string()).unwrap()];
    assert_eq!(api.limits.memory, ByteSize::mib(32));
    assert_eq!(
        api.limits.timeout.as_duration(),
        std::time::Duration::from_secs(2)
    );
    assert_eq!(api.limits.max_concurrency, 100);
    assert_eq!(api.env["MODE"], "prod");
    let web = &m.component[&ComponentName::try_from("web".to_string()).unwrap()];
    assert_eq!(web.limits, Limits::default());
}

#[test]
fn syntax_errors_name_file_and_line() {
    let text = "[app]\nname = \"x\"\n[component.a\nsource = 1\n";
    assert_eq!(
        syntax(text),
        (3, 13, "unclosed table, expected `]`".to_string())
    );
    assert_eq!(
        error(text),
        "app/skiff.toml:3:13: unclosed table, expected `]`"
    );
}

#[test]
fn unknown_fields_are_named_with_their_line() {
    assert_eq!(
        syntax("[app]\nname = \"x\"\n\n[component.a]\nsource = \"a.wasm\"\nrout = \"/\"\n"),
        (
            6,
            1,
            "unknown field `rout`, expected one of `source`, `build`, `workdir`, `route`, `env`, `files`, `allowed_outbound_hosts`, `allow_callers`, `limits`, `dependencies`, `scale`, `placement`, `health`, `rollout`, `request_timeout`"
                .to_string()
        )
    );
}

#[test]
fn bad_values_are_named() {
    assert_eq!(
        syntax("[app]\nname = \"x\"\n[component.a]\nsource = \"a.wasm\"\nroute = \"api\"\n"),
        (
            5,
            9,
            "invalid route \"api\": a route starts with '/', such as \"/api\" or \"/api/...\""
                .to_string()
        )
    );
    assert_eq!(
        syntax(
            "[app]\nname = \"x\"\n[component.a]\nsource = \"a.wasm\"\n[component.a.limits]\nmemory = \"lots\"\n",
        ),
        (
            6,
            10,
            "invalid size \"lots\": write a number with a unit, such as \"64MiB\"".to_string()
        )
    );
    assert_eq!(
        syntax("[app]\nname = \"Bad Name\"\n[component.a]\nsource = \"a.wasm\"\n"),
        (
            2,
            8,
            "invalid name \"Bad Name\": use lower-case letters, digits and '-', starting with a letter or digit, at most 63 characters"
                .to_string()
        )
    );
    let (line, column, message) = syntax(
        "[app]\nname = \"x\"\n[component.a]\nsource = \"a.wasm\"\nallow_callers = [\"shop/*\", \"billing\"]\n",
    );
    assert_eq!((line, column), (5, 17), "{message}");
    assert!(
        message.contains("invalid caller \"billing\" in allow_callers"),
        "{message}"
    );
}

#[test]
fn cross_component_conflicts_are_named() {
    let err = error(
        "[app]\nname = \"x\"\n[component.a]\nsource = \"a.wasm\"\nroute = \"/...\"\n[component.b]\nsource = \"b.wasm\"\nroute = \"/...\"\n",
    );
    assert_eq!(
        err,
        "app/skiff.toml: components \"a\" and \"b\" both claim route \"/...\""
    );
    assert_eq!(
        invalid("[app]\nname = \"x\"\n"),
        "no components: add a [component.<name>] table with a `source`"
    );
    assert_eq!(
        invalid("[app]\nname = \"x\"\n[component.a]\nsource = \"\"\n"),
        "component \"a\": source is empty; give the path of its .wasm file"
    );
    assert_eq!(
        invalid(
            "[app]\nname = \"x\"\n[component.a]\nsource = \"a.wasm\"\nfiles = [{ source = \"d\", destination = \"rel\" }]\n",
        ),
        "component \"a\": files destination \"rel\" must be an absolute guest path such as \"/data\""
    );
}

#[test]
fn a_bare_wasm_file_becomes_a_one_component_app() {
    let m = Manifest::for_single_component(Path::new("/tmp/My_Hello.wasm"));
    let (name, spec) = m.component.iter().next().unwrap();
    assert_eq!(name.as_str(), "my-hello");
    assert_eq!(spec.route, Some(Route::everything()));
}

#[test]
fn scale_and_placement_parse_with_defaults() {
    let m = parse(
        r#"
[app]
name = "shop"

[component.api]
source = "api.wasm"
[component.api.scale]
replicas = 3
[component.api.placement]
labels = { zone = "eu-1" }
strategy = "binpack"
memory = "256MiB"

[component.web]
source = "web.wasm"
[component.web.limits]
memory = "16MiB"
max_concurrency = 4
"#,
    )
    .unwrap();
    let api = &m.component[&ComponentName::try_from("api".to_string()).unwrap()];
    assert_eq!(api.scale.replicas(), Replicas::Fixed(3));
    assert_eq!(api.placement.labels["zone"], "eu-1");
    assert_eq!(api.placement.strategy, PlacementStrategy::Binpack);
    assert_eq!(api.placement.memory.map(|m| m.bytes()), Some(256 << 20));
    let web = &m.component[&ComponentName::try_from("web".to_string()).unwrap()];
    assert_eq!(web.scale.replicas(), Replicas::Fixed(1));
    assert_eq!(web.placement.strategy, PlacementStrategy::Spread);
    assert_eq!(web.placement.memory, None);

    assert_eq!(
        syntax(
            "[app]\nname = \"a\"\n[component.x]\nsource = \"x.wasm\"\n[component.x.placement]\nstrategy = \"random\"\n",
        ),
        (
            6,
            12,
            "unknown variant `random`, expected `spread` or `binpack`".to_string()
        )
    );
    assert_eq!(
        syntax(
            "[app]\nname = \"a\"\n[component.x]\nsource = \"x.wasm\"\n[component.x.scale]\nreplica = 2\n",
        ),
        (
            6,
            1,
            "unknown field `replica`, expected one of `replicas`, `min`, `max`, `target_concurrency`, `scale_down_delay`".to_string()
        )
    );
}

#[test]
fn autoscaling_keys_give_bounds_a_target_and_a_delay() {
    let m = parse(
        r#"
[app]
name = "shop"

[component.api]
source = "api.wasm"
[component.api.limits]
max_concurrency = 10
[component.api.scale]
min = 0
max = 6
scale_down_delay = "5s"

[component.web]
source = "web.wasm"
[component.web.scale]
target_concurrency = 25
"#,
    )
    .unwrap();
    let api = &m.component[&ComponentName::try_from("api".to_string()).unwrap()];
    assert_eq!(api.scale.replicas(), Replicas::Auto { min: 0, max: 6 });
    assert_eq!(api.scale.target_concurrency(&api.limits), 7);
    assert_eq!(
        api.scale.scale_down_delay(),
        std::time::Duration::from_secs(5)
    );
    let web = &m.component[&ComponentName::try_from("web".to_string()).unwrap()];
    assert_eq!(
        web.scale.replicas(),
        Replicas::Auto {
            min: 1,
            max: crate::manifest::DEFAULT_MAX_REPLICAS
        }
    );
    assert_eq!(web.scale.target_concurrency(&web.limits), 25);
    assert_eq!(
        web.scale.scale_down_delay(),
        crate::manifest::DEFAULT_SCALE_DOWN_DELAY
    );
}

#[test]
fn autoscaling_keys_that_contradict_are_refused_by_name() {
    // Reported at the line of the scale table, naming the keys.
    let invalid = |scale: &str| {
        let text = format!(
            "[app]\nname = \"a\"\n[component.x]\nsource = \"x.wasm\"\n[component.x.scale]\n{scale}\n"
        );
        match Manifest::parse(&text, Path::new("skiff.toml")) {
            Err(ManifestError::Syntax { line, message, .. }) => {
                assert_eq!(line, 5, "{message}");
                message
            }
            Err(ManifestError::Invalid { message, .. }) => message,
            other => panic!("{scale}: expected an invalid manifest, got {other:?}"),
        }
    };
    assert!(invalid("replicas = 2\nmax = 4").contains("give one or the other"));
    assert!(invalid("min = 5\nmax = 2").contains("scale.min (5) is above scale.max (2)"));
    assert!(invalid("target_concurrency = 0").contains("target_concurrency must be at least 1"));
    assert!(invalid("max = 0").contains("scale.max must be at least 1"));
    assert!(invalid("min = 1\nscale_down_delay = \"100ms\"").contains("at least \"1s\""));
    assert!(invalid("scale_down_delay = \"2h\"").contains("at most \"1h\""));
    assert!(invalid("max = 20000").contains("over the limit of 10000"));
    assert!(invalid("min = 20").contains("above the default max (10): set scale.max too"));
    let text = "[app]\nname = \"a\"\n[component.x]\nsource = \"x.wasm\"\n\
                [component.x.limits]\nmax_concurrency = 10\nmax_queued = 10\n\
                [component.x.scale]\ntarget_concurrency = 21\n";
    match Manifest::parse(text, Path::new("skiff.toml")) {
        Err(ManifestError::Invalid { message, .. }) => assert!(
            message.contains("scale.target_concurrency (21) is above what one replica takes at once (limits.max_concurrency 10 + limits.max_queued 10 = 20)"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn domains_are_checked_where_they_are_written() {
    let component = "\n[component.web]\nsource = \"web.wasm\"\nroute = \"/...\"\n";
    let ok = parse(&format!(
        "[app]\nname = \"shop\"\ndomains = [\"shop.example.com\", \"www.shop.example.com\"]\nhttps_redirect = true\n{component}"
    ))
    .unwrap();
    assert_eq!(ok.app.domains.len(), 2);
    assert!(ok.app.https_redirect);
    let (line, _, message) = syntax(&format!(
        "[app]\nname = \"shop\"\ndomains = [\"Shop.Example.com\"]\n{component}"
    ));
    assert_eq!(line, 3);
    assert!(message.contains("lower case"), "{message}");
    let message = invalid(&format!(
        "[app]\nname = \"shop\"\ndomains = [\"a.example.com\", \"a.example.com\"]\n{component}"
    ));
    assert!(message.contains("twice"), "{message}");
    let message = invalid(&format!(
        "[app]\nname = \"shop\"\nhttps_redirect = true\n{component}"
    ));
    assert!(message.contains("has none"), "{message}");
}
