//! Strict request bodies: a JSON object whose every key is known, every value checked,
//! and every problem reported at once with its field path (R-API-1). Written by hand
//! rather than with serde's `deny_unknown_fields` because serde stops at the first
//! error and names no path for type errors inside a flattened body.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError};

/// Largest request body the API reads.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A request body read whole, up to the router's limit ([`BODY_LIMIT`]). Unlike a bare
/// [`Bytes`], whose rejection is axum's plain text, a larger body is the typed 413 and
/// a body that cannot be read the typed 400.
#[derive(Debug)]
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Self(b)),
            Err(e) if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge)
            }
            Err(e) if crate::limits::is_body_timeout(&e) => Err(ApiError::RequestTimeout),
            Err(_) => Err(one("", "the request body could not be read")),
        }
    }
}

/// A body being validated.
#[derive(Debug)]
pub struct Fields {
    obj: Map<String, Value>,
    errors: Vec<FieldError>,
}

/// A value that may be set, cleared (`null`) or left out (for PATCH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch<T> {
    /// Not in the body.
    Keep,
    /// `null`.
    Clear,
    /// A value.
    Set(T),
}

impl Fields {
    /// Parses `body` as a JSON object and reports keys outside `allowed`.
    pub fn parse(body: &[u8], allowed: &[&str]) -> Result<Self, ApiError> {
        let obj = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(one("", "the body must be a JSON object")),
            Err(e) => return Err(one("", &format!("not JSON: {e}"))),
        };
        let mut errors = Vec::new();
        for k in obj.keys() {
            if !allowed.contains(&k.as_str()) {
                errors.push(FieldError {
                    field: k.clone(),
                    message: "unknown field".into(),
                });
            }
        }
        Ok(Self { obj, errors })
    }

    fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// A string of `1..=max` characters; `None` when absent (an error if `required`).
    pub fn string(&mut self, field: &str, required: bool, max: usize) -> Option<String> {
        let before = self.errors.len();
        match self.patch_string(field, max) {
            Patch::Set(v) => Some(v),
            // Already reported as invalid: one message per field.
            _ if self.errors.len() > before => None,
            Patch::Keep if required => {
                self.fail(field, "required");
                None
            }
            Patch::Clear if required => {
                self.fail(field, "must not be null");
                None
            }
            _ => None,
        }
    }

    /// A string of `1..=max` characters, `null`, or absent.
    pub fn patch_string(&mut self, field: &str, max: usize) -> Patch<String> {
        match self.obj.get(field) {
            None => Patch::Keep,
            Some(Value::Null) => Patch::Clear,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.fail(field, "must not be empty");
                Patch::Keep
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                self.fail(field, format!("at most {max} characters"));
                Patch::Keep
            }
            Some(Value::String(s)) => Patch::Set(s.clone()),
            Some(_) => {
                self.fail(field, "must be a string");
                Patch::Keep
            }
        }
    }

    /// One of `choices`, or absent.
    pub fn choice(&mut self, field: &str, choices: &[&str]) -> Option<String> {
        let v = self.string(field, false, 64)?;
        if choices.contains(&v.as_str()) {
            Some(v)
        } else {
            self.fail(field, format!("must be one of {}", choices.join(", ")));
            None
        }
    }

    /// A non-negative integer, or absent.
    pub fn unsigned(&mut self, field: &str) -> Option<u64> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n),
                None => {
                    self.fail(field, "must be a non-negative integer");
                    None
                }
            },
        }
    }

    /// A boolean, or absent.
    pub fn boolean(&mut self, field: &str) -> Option<bool> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.fail(field, "must be true or false");
                None
            }
        }
    }

    /// The raw value of `field`, for checks written elsewhere (arrays, objects).
    pub fn value(&self, field: &str) -> Option<&Value> {
        self.obj.get(field)
    }

    /// Records a problem found by the caller's own checks.
    pub fn invalid(&mut self, field: &str, message: impl Into<String>) {
        self.fail(field, message);
    }

    /// Every problem at once, or success.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::BadRequest(self.errors))
        }
    }
}

fn one(field: &str, message: &str) -> ApiError {
    ApiError::BadRequest(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut f = Fields::parse(
            br#"{"name": "", "url": 3, "userId": "7", "scopes": null}"#,
            &["name", "url", "scopes"],
        )
        .unwrap();
        assert_eq!(f.string("name", true, 255), None);
        assert_eq!(f.string("url", true, 2048), None);
        assert_eq!(f.patch_string("scopes", 10), Patch::Clear);
        assert_eq!(f.string("token_endpoint", true, 10), None);
        let Err(ApiError::BadRequest(errors)) = f.finish() else {
            panic!("expected a 400")
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["userId", "name", "url", "token_endpoint"]);
    }

    #[test]
    fn non_objects_are_refused() {
        for body in [&b"[]"[..], b"null", b"{", b"\"x\""] {
            assert!(matches!(
                Fields::parse(body, &[]),
                Err(ApiError::BadRequest(_))
            ));
        }
    }
}
