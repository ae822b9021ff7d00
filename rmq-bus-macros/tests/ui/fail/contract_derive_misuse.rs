use rmq_bus::contract::{Event, Request};
use serde::Serialize;

#[derive(Event, Serialize)]
struct NoAttribute;

#[derive(Event, Serialize)]
#[event(name = "order_created")]
struct UnknownArgument;

#[derive(Request, Serialize)]
#[request(pattern = "get_order")]
struct NoReply;

#[derive(Event, Serialize)]
#[event(pattern(cmd = "a", cmd = "b"))]
struct BadObjectPattern;

fn main() {}
