//! The frame of the OpenAPI document: info, the bearer security scheme, the
//! responses every authenticated route shares, and the SSE event schemas.
//! The paths themselves come from the handlers' `#[utoipa::path]` through
//! the router (see `crate::public_routes` and `crate::protected_routes`).

use crate::wire::{ErrorBody, ExecChunkEvent, ExecDoneEvent, ExecErrorEvent};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sandkasten API",
        description = "Sandboxes for AI agents: sessions, a persistent shell, files, \
                       persistent workspaces. \
                       Every route except `/healthz` requires `Authorization: Bearer <key>`. \
                       Every error is `ErrorBody` JSON."
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody, ExecChunkEvent, ExecDoneEvent, ExecErrorEvent)),
    tags(
        (name = "system", description = "Health, metrics and this document"),
        (name = "pool", description = "The pre-warmed pool"),
        (name = "sessions", description = "Session lifecycle"),
        (name = "exec", description = "Commands in the session's persistent shell"),
        (name = "processes", description = "Background processes: stdin, signals, PTYs, output kept and streamed"),
        (name = "files", description = "Files inside the sandbox"),
        (name = "workspaces", description = "Persistent workspaces and their files without a session"),
        (name = "ports", description = "TCP ports inside a session's sandbox, reached through the daemon"),
        (name = "mcp", description = "The Model Context Protocol (streamable HTTP transport): JSON-RPC messages whose methods and tools MCP describes"),
    ),
    modifiers(&SharedResponses)
)]
pub(crate) struct ApiDoc;

/// Adds the bearer scheme and the `401`/`500` responses to every operation
/// that requires the key (all but `/healthz`).
struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error_json = || {
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                .build()
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.responses.insert(
            "Unauthorized".into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("UNAUTHORIZED: missing or wrong API key")
                    .content("application/json", error_json())
                    .build(),
            ),
        );
        components.responses.insert(
            "BadRequest".into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(
                        "INVALID_REQUEST: a path parameter, query string or body that cannot be \
                         read (e.g. not UTF-8 after percent-decoding, a wrong type)",
                    )
                    .content("application/json", error_json())
                    .build(),
            ),
        );
        components.responses.insert(
            "PayloadTooLarge".into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("PAYLOAD_TOO_LARGE: the body is over `max_body_mb`")
                    .content("application/json", error_json())
                    .build(),
            ),
        );
        components.responses.insert(
            "InternalError".into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("INTERNAL_ERROR: details are logged, not returned")
                    .content("application/json", error_json())
                    .build(),
            ),
        );
    }
}

/// Adds the shared responses to the operations of a finished document; run
/// after the paths are merged in, which `Modify` on the frame cannot see.
///
/// The extractors every handler shares answer for themselves, whatever the
/// handler declares: an operation with parameters or a body can answer 400
/// `INVALID_REQUEST` (a path segment that is not UTF-8 once decoded, a
/// query or body of the wrong shape), and one with a body 413. Declared
/// here once, so that no route can forget them (the fuzz step of
/// scripts/test checks every answer against this document).
pub(crate) fn add_shared_responses(openapi: &mut utoipa::openapi::OpenApi) {
    for (path, item) in openapi.paths.paths.iter_mut() {
        if path == "/healthz" {
            continue;
        }
        let item_params = item.parameters.as_ref().is_some_and(|p| !p.is_empty());
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for op in operations.into_iter().flatten() {
            let has_params = item_params || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let has_body = op.request_body.is_some();
            let responses = &mut op.responses.responses;
            if has_params || has_body {
                responses
                    .entry("400".into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("BadRequest")));
            }
            if has_body {
                responses
                    .entry("413".into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("PayloadTooLarge")));
            }
            responses
                .entry("401".into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Unauthorized")));
            responses
                .entry("500".into())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name("InternalError")));
        }
    }
}
