"""The chat page at /ui in a real browser (Debian's headless Chromium, driven by Playwright),
against a running `lantern serve` on a tiny dummy model.

Usage: python chat_page.py BASE_URL SCREENSHOT_DIR [CHROMIUM [KEYED_BASE_URL API_KEY]]
(KEYED_BASE_URL: a second server started with that API key.)
Exits non-zero with a message naming the first check that failed; prints what it measured.
Run by tests/tests/chat_page.rs, which starts the server.
"""

import json
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

BASE, SHOTS = sys.argv[1].rstrip("/"), sys.argv[2]
CHROMIUM = sys.argv[3] if len(sys.argv) > 3 else "/usr/bin/chromium"
KEYED, KEY = (sys.argv[4].rstrip("/"), sys.argv[5]) if len(sys.argv) > 5 else (None, None)

# Records CSP violations in the page itself, before any of its scripts run.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""

# A stored conversation carrying HTML that must never run: as a user message (shown as text)
# and inside the model's answer (Markdown whose raw HTML is shown as text, then sanitized).
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
STORED = {
    "id": "stored",
    "title": "stored",
    "messages": [
        {"role": "user", "content": HOSTILE},
        {"role": "assistant", "content": "Here:\n\n```\nfn main() {}\n```\n\n" + HOSTILE},
    ],
}


def metric(name):
    text = urllib.request.urlopen(BASE + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def check(condition, what):
    if not condition:
        print("FAILED: " + what, file=sys.stderr)
        sys.exit(1)


# Needs 3,000 tokens: a random model cannot end its answer early.
LONG_ARRAY = '{"type": "array", "items": {"type": "integer"}, "minItems": 3000}'

# Clicks Stop the moment the last answer shows text; records whether the stream was running.
STOP_AT_FIRST_TEXT = """
window.__stopped = undefined;
const observer = new MutationObserver(() => {
  const answers = document.querySelectorAll('#messages .message.assistant');
  const last = answers[answers.length - 1];
  if (last && last.innerText.length > 0) {
    const stop = document.querySelector('#stop');
    window.__stopped = !stop.hidden;
    stop.click();
    observer.disconnect();
  }
});
observer.observe(document.querySelector('#messages'), {childList: true, subtree: true, characterData: true});
"""

# Records, at every change of the messages, the last answer's length and whether its stream
# is still running (the Stop button shows).
WATCH_ANSWER = """
window.__lengths = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll('#messages .message.assistant');
  const last = answers[answers.length - 1];
  if (last) window.__lengths.push([last.innerText.length, !document.querySelector('#stop').hidden]);
}).observe(document.querySelector('#messages'), {childList: true, subtree: true, characterData: true});
"""


def main():
    report = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_init_script(RECORD_VIOLATIONS)
        page = context.new_page()
        requests, console = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: console.append(m.text))

        # A browser asking for / lands on the page.
        page.goto(BASE + "/")
        check(page.url == BASE + "/ui", "GET / did not lead to /ui: " + page.url)
        page.wait_for_function("() => document.querySelector('#model').options.length > 0")

        # Settings survive a reload.
        page.click("#settings summary")
        page.fill("#system-prompt", "You are terse.")
        page.fill("#temperature", "0.3")
        page.dispatch_event("#temperature", "change")
        page.dispatch_event("#system-prompt", "change")
        page.reload()
        page.wait_for_function("() => document.querySelector('#model').options.length > 0")
        check(page.input_value("#temperature") == "0.3", "temperature lost on reload")
        check(page.input_value("#system-prompt") == "You are terse.", "system prompt lost on reload")
        page.click("#settings summary")

        # A prompt is sent; the answer grows in the page before the stream ends. A JSON schema
        # that needs thousands of tokens keeps the random model from ending early.
        page.select_option("#output-format", "json_schema")
        page.fill("#json-schema", LONG_ARRAY)
        page.dispatch_event("#json-schema", "change")
        page.fill("#max-tokens", "400")
        page.dispatch_event("#max-tokens", "change")
        page.evaluate(WATCH_ANSWER)
        page.fill("#prompt", "Tell me a story.")
        page.press("#prompt", "Enter")
        page.wait_for_function("() => window.__lengths.length > 0")
        page.wait_for_selector("#stop", state="hidden")
        lengths = page.evaluate("window.__lengths")
        grew = sorted(set(length for length, streaming in lengths if streaming and length > 0))
        final = len(page.locator("#messages .message.assistant").last.inner_text())
        report["answer_lengths_seen_while_streaming"] = len(grew)
        check(len(grew) >= 2 and grew[0] < final,
              "the answer did not grow while streaming: %s; final %d; error %r; stats %r" % (
                  lengths[:20], final, page.inner_text("#error"), page.inner_text("#stats")))
        check("TTFT" in page.inner_text("#stats"), "no TTFT in the stats: " + page.inner_text("#stats"))
        check("cached" in page.inner_text("#stats"), "no cached tokens in the stats")

        # Shift+Enter breaks a line instead of sending.
        page.fill("#prompt", "one")
        page.press("#prompt", "Shift+Enter")
        page.keyboard.type("two")
        check(page.input_value("#prompt") == "one\ntwo", "Shift+Enter did not break the line")
        page.fill("#prompt", "")

        # Stop cancels: the server counts it and gives the sequence's KV blocks back.
        cancelled_before = metric("lantern_requests_cancelled_total") or 0
        page.fill("#max-tokens", "3000")
        page.dispatch_event("#max-tokens", "change")
        page.evaluate(STOP_AT_FIRST_TEXT)
        page.fill("#prompt", "Go on for a long time.")
        page.click("#send")
        page.wait_for_function("() => window.__stopped !== undefined")
        page.wait_for_selector("#stop", state="hidden")
        used_while_running = page.evaluate("window.__stopped")
        deadline = time.time() + 20
        while time.time() < deadline:
            cancelled = metric("lantern_requests_cancelled_total") or 0
            used = metric("lantern_kv_cache_blocks_used")
            if cancelled > cancelled_before and used == 0:
                break
            time.sleep(0.2)
        report["cancelled_total"] = cancelled
        check(used_while_running, "Stop was not clicked while the answer streamed")
        check(cancelled > cancelled_before, "lantern_requests_cancelled_total did not rise")
        check(used == 0, "KV blocks still in use after Stop: %s" % used)
        check("stopped" in page.locator("#messages .message.assistant").last.inner_text(),
              "the stopped answer does not say so")

        page.select_option("#output-format", "text")
        # A 4xx is said plainly.
        page.fill("#max-tokens", "100000")
        page.dispatch_event("#max-tokens", "change")
        page.fill("#prompt", "hello")
        page.click("#send")
        page.wait_for_selector("#error:not([hidden])")
        error = page.inner_text("#error")
        check("400" in error and "max_tokens" in error, "the 4xx was not said plainly: " + error)
        page.fill("#max-tokens", "48")
        page.dispatch_event("#max-tokens", "change")

        # Export gives the conversation as JSON.
        with page.expect_download() as download:
            page.click("#export-chat")
        exported = json.loads(open(download.value.path()).read())
        check(any(m["role"] == "user" for m in exported["messages"]), "the export has no messages")

        # A stored conversation with hostile HTML: Markdown renders, nothing runs.
        page.evaluate(
            "([c]) => { localStorage.setItem('lantern.conversations', JSON.stringify([c]));"
            " localStorage.setItem('lantern.current', JSON.stringify(c.id)); }",
            [STORED],
        )
        page.reload()
        page.wait_for_selector("#messages .message.assistant pre code")
        check(page.evaluate("window.__pwned") is None, "stored HTML ran")
        check(page.locator("#messages script").count() == 0, "a script element reached the page")
        check(page.locator("#messages img").count() == 0, "an img element reached the page")
        user_text = page.locator("#messages .message.user").first.inner_text()
        check(HOSTILE in user_text, "the user's HTML is not shown as text")
        answer_text = page.locator("#messages .message.assistant").first.inner_text()
        check("<img src=x" in answer_text, "the answer's HTML is not shown as text")
        check("fn main() {}" in page.inner_text("#messages .message.assistant pre code"),
              "the fenced code block did not render")
        page.screenshot(path=SHOTS + "/desktop.png")

        # Delete a conversation; a new one starts empty.
        page.click("#new-chat")
        check(page.locator("#messages .message").count() == 0, "a new chat is not empty")
        count = page.locator("#conversations li").count()
        page.locator("#conversations li button").first.click()
        check(page.locator("#conversations li").count() == count - 1, "delete did not delete")

        # Phone width: usable, the sidebar behind its button.
        # (and in the dark colour scheme, which the page follows)
        phone = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
        phone.add_init_script(RECORD_VIOLATIONS)
        small = phone.new_page()
        small.on("request", lambda r: requests.append(r.url))
        small.goto(BASE + "/ui")
        small.wait_for_function("() => document.querySelector('#model').options.length > 0")
        check(small.is_visible("#prompt") and small.is_visible("#send"), "composer hidden at phone width")
        background = small.evaluate("() => getComputedStyle(document.body).backgroundColor")
        check(background == "rgb(23, 24, 27)", "not the dark scheme: " + background)
        check(small.is_hidden("#sidebar"), "the sidebar covers the page at phone width")
        small.click("#toggle-sidebar")
        check(small.is_visible("#sidebar"), "the sidebar does not open at phone width")
        small.click("#toggle-sidebar")
        small.fill("#prompt", "Hi")
        small.press("#prompt", "Enter")
        small.wait_for_selector("#messages .message.assistant")
        small.wait_for_selector("#stop", state="hidden")
        small.screenshot(path=SHOTS + "/phone.png")

        # A server that asks for an API key: the page says so, takes the key, then works.
        tabs = [page, small]
        if KEYED:
            keyed = browser.new_context(viewport={"width": 1280, "height": 800})
            keyed.add_init_script(RECORD_VIOLATIONS)
            locked = keyed.new_page()
            locked.on("request", lambda r: requests.append(r.url))
            locked.goto(KEYED + "/ui")
            locked.wait_for_selector("#api-key-label:not([hidden])")
            check("API key" in locked.inner_text("#error"), "the page did not ask for the key")
            locked.fill("#api-key", KEY)
            locked.dispatch_event("#api-key", "change")
            locked.reload()
            locked.wait_for_function("() => document.querySelector('#model').options.length > 0")
            locked.fill("#prompt", "Hi")
            locked.press("#prompt", "Enter")
            locked.wait_for_selector("#stop", state="hidden")
            check(locked.is_hidden("#error"), "the keyed call failed: " + locked.inner_text("#error"))
            check(locked.locator("#messages .message.assistant").count() == 1, "no answer with the key")
            tabs.append(locked)
            report["api_key_flow"] = "ok"

        # Nothing left these origins; no CSP violation anywhere.
        origins = [BASE] + ([KEYED] if KEYED else [])
        others = [u for u in requests
                  if not any(u.startswith(o) for o in origins) and not u.startswith("blob:")]
        check(not others, "requests to other hosts: %s" % others)
        for tab in tabs:
            violations = tab.evaluate("window.__csp")
            check(not violations, "CSP violations: %s" % violations)
        check(not [m for m in console if "Content Security Policy" in m], "CSP messages: %s" % console)
        report["requests"] = len(requests)
        browser.close()
    print(json.dumps(report))


main()
