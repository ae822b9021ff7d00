#!/usr/bin/env python3
"""Seeds the fuzz corpora from the poison corpus of the behaviour tests
(rmq-bus/tests/behaviour/dead_letters.rs) and a few well-formed packets. Run once; the seeds are
committed, and fuzzing adds to them."""
import hashlib, os, re, sys

root = os.path.dirname(os.path.abspath(__file__))
source = open(os.path.join(root, "..", "rmq-bus", "tests", "behaviour", "dead_letters.rs")).read()
poison = [m.encode() for m in re.findall(r'br#"(.*?)"#', source)]
poison += [b"hello", b"", b"\xff\xfe\x00binary", b"[1,2,3]", b'"order_created"', b"42", b"null",
           b"[" * 200 + b"]" * 200]
good = [
    b'{"pattern":"order_created","data":{"productName":"Keyboard","price":49.9}}',
    b'{"pattern":"sum","data":[1,2,3],"id":"req-1"}',
    b'{"pattern":{"cmd":"echo"},"data":{"x":1},"id":"req-2"}',
    b'{"data":1,"pattern":"raw"}',
    b' {\n "pattern" : "nothing" }',
    b'{"pattern":"shipment.eu","data":null}',
    b'{"pattern":"a\\u0062","data":1}',
    b'{"pattern":"order_created","data":{},"id":1}',
]

def write(target, items):
    folder = os.path.join(root, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for item in items:
        name = "seed-" + hashlib.sha1(item).hexdigest()[:16]
        open(os.path.join(folder, name), "wb").write(item)

write("decode_differential", poison + good)
# delivery: first byte 0 (the body as it is), 4 (as a request), 8 (odd headers); 2 wraps data.
write("delivery", [bytes([c]) + b for c in (0, 4, 8) for b in poison + good]
      + [bytes([2, i]) + b'{"productName":"K","price":1}' for i in range(10)])
write("topic_match", [b"\x00\x01\x02\x00\x01\x02", b"\x04\x02\x00\x00\x02\x01", b"\x03\x02\x00\x00\x02\x00\x02\x01"])
write("object_pattern", [b"\x02\x01\x00\x02\x05\x02\x01\x01", b"\x04" + bytes(range(40))])
