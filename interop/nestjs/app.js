// A real NestJS 11 RMQ microservice plus a NestJS ClientProxy driver, for rmq-bus's interop tests
// (rmq-bus/tests/nestjs_interop.rs). Plain CommonJS: decorators are applied by hand.
//
// Environment:
//   NEST_QUEUE             the queue the microservice consumes (required)
//   RABBIT_MQ_URI          the broker (default amqp://guest:guest@127.0.0.1:5672)
//   NEST_QUEUE_ARGUMENTS   optional JSON object of x- arguments for every queue this process
//                          declares (server and clients), e.g. {"x-expires":120000}
//
// stdout carries only JSON lines (see README.md): {"event":"ready"}, {"event":"received",...},
// {"event":"request",...}, and {"reply":<id>,...} answers to the commands read on stdin.
// Everything else (Nest's logger, stray console output) goes to stderr.
'use strict';

require('reflect-metadata');
const readline = require('node:readline');
const { Controller, Module } = require('@nestjs/common');
const { NestFactory } = require('@nestjs/core');
const {
  ClientProxyFactory,
  Ctx,
  EventPattern,
  MessagePattern,
  Payload,
  RpcException,
  Transport,
} = require('@nestjs/microservices');
const { lastValueFrom, timeout } = require('rxjs');

const out = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
// Keep stdout for the protocol: anything a library prints goes to stderr.
console.log = console.info = console.debug = console.error;

const stderrLogger = {
  log: (...args) => console.error('[nest]', ...args),
  error: (...args) => console.error('[nest:error]', ...args),
  warn: (...args) => console.error('[nest:warn]', ...args),
  debug: () => {},
  verbose: () => {},
  fatal: (...args) => console.error('[nest:fatal]', ...args),
};

const URI = process.env.RABBIT_MQ_URI || 'amqp://guest:guest@127.0.0.1:5672';
const QUEUE = process.env.NEST_QUEUE;
if (!QUEUE) {
  console.error('NEST_QUEUE must name the queue to consume');
  process.exit(2);
}
const QUEUE_ARGUMENTS = process.env.NEST_QUEUE_ARGUMENTS
  ? JSON.parse(process.env.NEST_QUEUE_ARGUMENTS)
  : undefined;
const queueOptions = () =>
  QUEUE_ARGUMENTS ? { durable: true, arguments: QUEUE_ARGUMENTS } : { durable: true };

/** The AMQP properties of a delivery, as rmq-bus tests want to see them. */
function properties(context) {
  const { properties: p, fields } = context.getMessage();
  return {
    contentType: p.contentType,
    deliveryMode: p.deliveryMode,
    correlationId: p.correlationId,
    replyTo: p.replyTo,
    headers: p.headers,
    redelivered: fields.redelivered,
  };
}

function ack(context) {
  context.getChannelRef().ack(context.getMessage());
}

function received(kind, pattern, data, context) {
  out({ event: kind, pattern, data, properties: properties(context) });
  ack(context);
}

class AppController {
  onRustToNest(data, context) {
    received('received', 'rust_to_nest', data, context);
  }

  onObjectEvent(data, context) {
    received('received', { cmd: 'object_event', v: 1 }, data, context);
  }

  sum(data, context) {
    received('request', 'sum', data, context);
    return data.reduce((total, n) => total + n, 0);
  }

  echo(data, context) {
    received('request', { cmd: 'echo' }, data, context);
    return data;
  }

  failText(data, context) {
    received('request', 'fail_text', data, context);
    throw new RpcException('boom');
  }

  failObject(data, context) {
    received('request', 'fail_object', data, context);
    throw new RpcException({ code: 42, reason: 'nope' });
  }

  failPlain(data, context) {
    received('request', 'fail_plain', data, context);
    throw new Error('secret detail');
  }
}

// What TypeScript emits for `@EventPattern(p) method(@Payload() data, @Ctx() context)`.
function handle(method, patternDecorator) {
  const descriptor = Object.getOwnPropertyDescriptor(AppController.prototype, method);
  Payload()(AppController.prototype, method, 0);
  Ctx()(AppController.prototype, method, 1);
  Reflect.decorate([patternDecorator], AppController.prototype, method, descriptor);
}
handle('onRustToNest', EventPattern('rust_to_nest'));
handle('onObjectEvent', EventPattern({ cmd: 'object_event', v: 1 }));
handle('sum', MessagePattern('sum'));
handle('echo', MessagePattern({ cmd: 'echo' }));
handle('failText', MessagePattern('fail_text'));
handle('failObject', MessagePattern('fail_object'));
handle('failPlain', MessagePattern('fail_plain'));
Controller()(AppController);

class AppModule {}
Module({ controllers: [AppController] })(AppModule);

// The driver: a NestJS ClientProxy per target queue.
const clients = new Map();
function client(queue) {
  let proxy = clients.get(queue);
  if (!proxy) {
    proxy = ClientProxyFactory.create({
      transport: Transport.RMQ,
      options: { urls: [URI], queue, queueOptions: queueOptions() },
    });
    clients.set(queue, proxy);
  }
  return proxy;
}

/** An error as received, made printable: Error instances lose their fields in JSON. */
function printable(error) {
  return error instanceof Error ? { name: error.name, message: error.message } : error;
}

async function run(command) {
  const { cmd, queue, pattern, data } = command;
  switch (cmd) {
    case 'emit':
      await lastValueFrom(client(queue).emit(pattern, data), { defaultValue: undefined });
      return {};
    case 'send': {
      const reply$ = client(queue).send(pattern, data).pipe(timeout(command.timeoutMs ?? 5000));
      return { response: await lastValueFrom(reply$, { defaultValue: null }) };
    }
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd)}`);
  }
}

async function main() {
  const app = await NestFactory.createMicroservice(AppModule, {
    transport: Transport.RMQ,
    options: {
      urls: [URI],
      queue: QUEUE,
      queueOptions: queueOptions(),
      noAck: false,
      prefetchCount: 10,
    },
    logger: stderrLogger,
  });
  await app.listen();
  out({ event: 'ready' });

  const lines = readline.createInterface({ input: process.stdin, terminal: false });
  lines.on('line', (line) => {
    if (!line.trim()) return;
    let command;
    try {
      command = JSON.parse(line);
    } catch (error) {
      out({ reply: null, ok: false, error: `not JSON: ${error.message}` });
      return;
    }
    run(command).then(
      (result) => out({ reply: command.id, ok: true, ...result }),
      (error) => out({ reply: command.id, ok: false, error: printable(error) }),
    );
  });
  // The test harness closing stdin (or exiting) ends the process cleanly.
  lines.on('close', async () => {
    await Promise.allSettled([...clients.values()].map((c) => c.close()));
    await app.close();
    process.exit(0);
  });
}

main().catch((error) => {
  console.error('nestjs fixture failed to start:', error);
  process.exit(1);
});
