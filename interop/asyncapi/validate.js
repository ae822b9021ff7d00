// Validates AsyncAPI documents with the official parser (@asyncapi/parser, pinned in
// package.json): `node validate.js FILE...`. Prints every diagnostic of every document, one a
// line, and exits 1 if any has error severity or a document cannot be parsed; 0 otherwise.
// Run by rmq-bus/tests/asyncapi.rs on the documents in examples/asyncapi/.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');

const SEVERITY = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'information',
  [DiagnosticSeverity.Hint]: 'hint',
};

async function validate(parser, file) {
  const source = path.resolve(file);
  const text = fs.readFileSync(source, 'utf8');
  const { document, diagnostics } = await parser.parse(text, { source });
  let errors = 0;
  for (const diagnostic of diagnostics) {
    const severity = SEVERITY[diagnostic.severity] ?? `severity ${diagnostic.severity}`;
    if (diagnostic.severity === DiagnosticSeverity.Error) errors += 1;
    const at = diagnostic.path && diagnostic.path.length ? ` at /${diagnostic.path.join('/')}` : '';
    console.log(`${file}: ${severity} ${diagnostic.code}${at}: ${diagnostic.message}`);
  }
  if (document === undefined) {
    console.log(`${file}: not parsed`);
    errors += 1;
  } else {
    const version = document.version();
    const operations = document.operations().length;
    const channels = document.channels().length;
    const messages = document.components().messages().length;
    console.log(
      `${file}: AsyncAPI ${version}, ${channels} channels, ${operations} operations, ` +
        `${messages} messages, ${diagnostics.length} diagnostics, ${errors} errors`,
    );
  }
  return errors;
}

async function main(files) {
  if (files.length === 0) {
    console.error('usage: node validate.js FILE...');
    return 2;
  }
  const parser = new Parser();
  let errors = 0;
  for (const file of files) {
    errors += await validate(parser, file);
  }
  return errors === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
