// The hello app in JavaScript: answers every request with a greeting taken
// from the component's `env` in skiff.toml (GREETING), like examples/hello.
//
// Run it: `skiff run examples/hello-js --build`, then `curl localhost:3000/`.
// componentize-js (StarlingMonkey) turns the `fetch` event handler into the
// component's wasi:http/incoming-handler export.
import { getEnvironment } from "wasi:cli/environment@0.2.10";

addEventListener("fetch", (event) => {
  // Read per request: top-level code runs once, at build time, when
  // componentize-js snapshots the initialized engine.
  const env = new Map(getEnvironment());
  const greeting = env.get("GREETING") ?? "Hello";
  event.respondWith(
    new Response(`${greeting} from JavaScript!\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    }),
  );
});
