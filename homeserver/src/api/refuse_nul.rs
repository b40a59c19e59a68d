//! U+0000 in a path or query parameter: SQLite would store it, PostgreSQL refuses it, and no
//! Matrix identifier, type or token contains it. Refused before any handler runs, alike on
//! both backends.
//!
//! A layer of its own rather than `middleware::from_fn`: that one boxes an `async fn`'s future
//! and clones the rest of the stack into it for every request, and a held long-poll kept that
//! kilobyte for as long as it waited.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{extract::Request, response::IntoResponse, response::Response};
use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::api::error::ApiError;

#[derive(Clone, Copy)]
pub struct RefuseNulLayer;

impl<S> Layer<S> for RefuseNulLayer {
    type Service = RefuseNul<S>;

    fn layer(&self, inner: S) -> RefuseNul<S> {
        RefuseNul(inner)
    }
}

#[derive(Clone)]
pub struct RefuseNul<S>(S);

impl<S> Service<Request> for RefuseNul<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let uri = request.uri();
        if uri.path().contains("%00") || uri.query().is_some_and(|q| q.contains("%00")) {
            let refused = ApiError::invalid_param("U+0000 is not allowed in request paths or parameters");
            return Either::Left(ready(Ok(refused.into_response())));
        }
        Either::Right(self.0.call(request))
    }
}
