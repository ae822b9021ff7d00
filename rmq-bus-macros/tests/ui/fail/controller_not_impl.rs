use rmq_bus::controller;

#[controller]
struct Billing;

fn main() {}
