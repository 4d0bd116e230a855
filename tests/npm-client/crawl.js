// A crawl on npm's own registry client, the benchmark's comparison point: fetches every
// name listed in NAMES_FILE from REGISTRY with npm-registry-fetch, IN_FLIGHT at a time, and
// writes each body to OUT_DIR (temp file + rename, as a careful crawler would). Prints one
// JSON line: {"fetched","missing","failed","bytes","seconds","per_second"}.
//
//   node crawl.js REGISTRY NAMES_FILE OUT_DIR [IN_FLIGHT=50]
//
// Install once with `npm ci --ignore-scripts` in this directory. Only loopback URLs are
// used by the benchmark that spawns it.
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const npmFetch = require('npm-registry-fetch')

async function main () {
  const [registry, namesFile, outDir, inFlightArg] = process.argv.slice(2)
  if (!registry || !namesFile || !outDir) {
    console.error('usage: node crawl.js REGISTRY NAMES_FILE OUT_DIR [IN_FLIGHT=50]')
    process.exit(2)
  }
  const inFlight = Number(inFlightArg || 50)
  const names = fs.readFileSync(namesFile, 'utf8').split('\n').filter(Boolean)
  fs.mkdirSync(outDir, { recursive: true })
  const opts = { registry, retry: { retries: 2 }, preferOnline: true }
  let next = 0
  const tally = { fetched: 0, missing: 0, failed: 0, bytes: 0 }
  const started = process.hrtime.bigint()

  async function one (name) {
    // Scoped names travel as @scope%2fname, as npm itself sends them.
    const spec = '/' + name.replace('/', '%2f')
    try {
      const res = await npmFetch(spec, opts)
      const body = await res.buffer()
      const file = path.join(outDir, encodeURIComponent(name) + '.json')
      await fs.promises.writeFile(file + '.tmp', body)
      await fs.promises.rename(file + '.tmp', file)
      tally.fetched += 1
      tally.bytes += body.length
    } catch (e) {
      if (e.statusCode === 404) tally.missing += 1
      else tally.failed += 1
    }
  }

  async function worker () {
    while (next < names.length) await one(names[next++])
  }
  await Promise.all(Array.from({ length: inFlight }, worker))
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  console.log(JSON.stringify({ ...tally, seconds, per_second: tally.fetched / seconds }))
}

main().catch(e => { console.error(e); process.exit(1) })
