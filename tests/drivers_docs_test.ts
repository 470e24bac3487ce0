/**
 * docs/drivers.md's recipes type-check with the drivers' own types: every
 * ```ts block is written, as users paste it, into a temporary folder inside
 * the project (so deno.json's names and its frozen lockfile apply), then
 * `deno check`ed. A recipe with a typo in a driver's API must fail the same
 * check: the drivers' types are really read, not taken as `any`.
 */
import { assert, assertEquals, assertMatch, assertNotEquals } from "@std/assert";
import { ROOT_DIR, run } from "./_helpers.ts";

const PAGE = "docs/drivers.md";

/** The page's ```ts blocks, in order, with the heading each one sits under. */
function tsBlocks(markdown: string): { heading: string; code: string }[] {
  const blocks: { heading: string; code: string }[] = [];
  let heading = "";
  for (const part of markdown.split(/^(```ts\n[\s\S]*?^```$)/m)) {
    if (part.startsWith("```ts\n")) {
      blocks.push({ heading, code: part.slice("```ts\n".length, -"```".length) });
    } else {
      heading = [...part.matchAll(/^## (.+)$/gm)].at(-1)?.[1] ?? heading;
    }
  }
  return blocks;
}

/** Writes each source into a temporary folder in the project, runs `deno check` on them, removes it. */
async function checkSources(sources: string[]) {
  const dir = await Deno.makeTempDir({ dir: ROOT_DIR, prefix: ".drivers-docs-" });
  try {
    const files = await Promise.all(sources.map(async (code, i) => {
      const file = `${dir}/recipe_${i + 1}.ts`;
      await Deno.writeTextFile(file, code);
      return file;
    }));
    return await run([Deno.execPath(), "check", ...files]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const blocks = tsBlocks(await Deno.readTextFile(`${ROOT_DIR}${PAGE}`));

Deno.test(`every ts block of ${PAGE} type-checks with the drivers' own types`, async () => {
  const headings = blocks.map((block) => block.heading);
  for (const driver of ["ioredis", "pg: a Client", "pg: a Pool", "postgres.js", "mysql2"]) {
    assert(headings.includes(driver), `no recipe under "## ${driver}": ${headings.join(", ")}`);
  }
  const output = await checkSources(blocks.map((block) => block.code));
  const files = blocks.map((block, i) => `recipe_${i + 1}.ts: ${block.heading}`).join("\n");
  assertEquals(output.code, 0, `deno check failed:\n${output.stderr}\n${files}`);
});

Deno.test(`a recipe of ${PAGE} with a typo in pg's API fails the same check`, async () => {
  const recipe = blocks.find((block) => block.heading === "pg: a Client")?.code ?? "";
  assert(recipe.includes("client.connection.stream"), "the pg Client recipe changed: adapt this");
  const output = await checkSources([recipe.replace("connection.stream", "connection.streem")]);
  assertNotEquals(output.code, 0, "deno check passed a recipe that uses a property pg lacks");
  assertMatch(output.stderr, /streem/);
});

Deno.test("every ts block of the README type-checks, the service snippet with the drivers' types", async () => {
  const readme = tsBlocks(await Deno.readTextFile(`${ROOT_DIR}README.md`));
  assert(
    readme.some((block) => block.code.includes("db.connection.stream")),
    "the README's service snippet (with pg) is gone: adapt this test",
  );
  const output = await checkSources(readme.map((block) => block.code));
  assertEquals(output.code, 0, `deno check failed:\n${output.stderr}`);
});
