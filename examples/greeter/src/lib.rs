//! A library component: exports `skiff-examples:greeter/greet`. It serves no
//! HTTP itself; the `greeting` app imports it, and Skiff composes the two
//! into one component (see `greeting/skiff.toml`).

wit_bindgen::generate!({ path: "wit", world: "greeter" });

struct Greeter;

impl exports::skiff_examples::greeter::greet::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("Hello, {name}! (from the greeter library component)\n")
    }
}

export!(Greeter);
