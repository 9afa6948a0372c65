"""The dashboard page, rendered from its Jinja2 template: escaped text, the CSP's exact assets."""

from __future__ import annotations

from app.entrypoints.dashboard_page import CARD_KEYS, page_html, page_script, page_style

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_text_given_to_the_page_comes_out_escaped() -> None:
    page = page_html(cards=("total", HOSTILE))
    assert HOSTILE not in page and "<img" not in page
    assert 'id="count-&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img' in page
    assert page.count("<script>") == 1, "only the page's own script"


def test_the_page_inlines_exactly_the_script_and_style_its_policy_hashes() -> None:
    page = page_html()
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert script == page_script() and style == page_style()
    assert "const POLL_MS = 2000;" in script and ".sw-line {" in style


def test_the_page_has_a_counter_for_every_status_and_a_legend_entry_per_outcome() -> None:
    page = page_html()
    for key in CARD_KEYS:
        assert f'<span class="n" id="count-{key}">–</span>' in page
    assert '<span class="l">dead lettered</span>' in page
    assert '<span><i class="sw-dead_lettered"></i>dead lettered</span>' in page
    assert page.startswith("<!doctype html>\n") and page.endswith("</body></html>\n")
