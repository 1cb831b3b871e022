"""build_template_data: the 2023 value rules of WeChat template fields."""

import datetime

import pytest

from services.push_outcome import utf16_length
from services.wechat import build_template_data, template_field_kind
from tests.fakes.wechat_fake import VALUE_RULES
from tests.push.support import START_TIME, TEMPLATE_MAPPING

pytestmark = pytest.mark.timeout(10)

SENT_AT_MS = int(START_TIME * 1000)  # 2025-12-04 08:00 in Beijing


def build(
    mapping=None,
    sender="王医生",
    sent_at_ms=SENT_AT_MS,
    excerpt="请明天来复诊",
    **options,
):
    return build_template_data(
        mapping or TEMPLATE_MAPPING, sender, sent_at_ms, excerpt, **options
    )


def value(data, key):
    return data[key]["value"]


def test_fields_filled_from_message():
    data = build()

    assert data == {
        "thing1": {"value": "王医生"},
        "time2": {"value": "2025-12-04 08:00"},
        "thing3": {"value": "请明天来复诊"},
    }


def test_long_thing_cut_with_ellipsis_inside_limit():
    data = build(excerpt="您好，明天上午八点请到社区卫生服务中心复诊，记得空腹")

    assert value(data, "thing3") == "您好，明天上午八点请到社区卫生服务中心…"
    assert len(value(data, "thing3")) == 20


def test_thing_of_exactly_twenty_kept():
    excerpt = "一二三四五六七八九十" * 2

    assert value(build(excerpt=excerpt), "thing3") == excerpt


def test_emoji_never_split():
    data = build(excerpt="😀" * 15)

    text = value(data, "thing3")
    assert utf16_length(text) <= 20
    assert text == "😀" * 9 + "…"


def test_line_breaks_become_spaces():
    data = build(sender="Dr.\r\nWang", excerpt="第一行\n第二行\t第三行\u2028第四行")

    assert value(data, "thing1") == "Dr. Wang"
    assert value(data, "thing3") == "第一行 第二行 第三行 第四行"


def test_empty_text_gets_placeholder():
    data = build(sender="", excerpt=" \n ")

    assert value(data, "thing1") == "-"
    assert value(data, "thing3") == "-"


def test_time_uses_given_zone():
    data = build(tz=datetime.timezone.utc)

    assert value(data, "time2") == "2025-12-04 00:00"


def test_date_field_formatted_in_chinese():
    data = build({"date1": "sent_at"})

    assert value(data, "date1") == "2025年12月4日"


def test_character_string_keeps_ascii_only():
    data = build({"character_string1": "sender_name"}, sender="王医生 Dr.Wang-07")

    assert value(data, "character_string1") == "Dr.Wang-07"


def test_long_character_string_cut_with_ascii_ellipsis():
    data = build({"character_string1": "excerpt"}, excerpt="A" * 40)

    assert value(data, "character_string1") == "A" * 29 + "..."


def test_phrase_keeps_five_chinese_characters():
    data = build({"phrase1": "excerpt"}, excerpt="new 新的复诊消息提醒")

    assert value(data, "phrase1") == "新的复诊消"


def test_phrase_without_chinese_raises():
    with pytest.raises(ValueError, match="phrase1"):
        build({"phrase1": "excerpt"}, excerpt="hello")


def test_name_limits_depend_on_script():
    chinese = build({"name1": "sender_name"}, sender="欧阳王李张刘陈杨黄赵周吴")
    latin = build({"name1": "sender_name"}, sender="Alexandria Catherine Montgomery")

    assert value(chinese, "name1") == "欧阳王李张刘陈杨黄赵"
    assert len(value(latin, "name1")) <= 20
    assert value(latin, "name1").startswith("Alexandria Catherine")


def test_fixed_text_sources():
    mapping = {
        "phrase4": "text:新消息",
        "const5": "text:待回复",
        "amount6": "text:¥0.00",
    }

    data = build(mapping)

    assert value(data, "phrase4") == "新消息"
    assert value(data, "const5") == "待回复"
    assert value(data, "amount6") == "¥0.00"


def test_first_and_remark_left_out():
    mapping = dict(TEMPLATE_MAPPING, first="text:您有新消息", remark="excerpt")

    data = build(mapping)

    assert "first" not in data
    assert "remark" not in data


@pytest.mark.parametrize(
    "mapping",
    [
        {"thing1": "body"},
        {"time2": "excerpt"},
        {"amount1": "excerpt"},
        {"amount1": "text:99"},
        {"time1": "text:tomorrow"},
        {"unknownkind1": "excerpt"},
        {"number1": "sent_at"},
    ],
)
def test_mapping_that_cannot_fit_raises(mapping):
    with pytest.raises(ValueError, match=list(mapping)[0]):
        build(mapping)


def test_template_field_kind():
    assert template_field_kind("thing12") == "thing"
    assert template_field_kind("character_string2") == "character_string"
    assert template_field_kind("first") == "first"


NASTY_TEXTS = [
    "",
    "a",
    "\n\n\n",
    "普通的一句话",
    "很长的中文句子" * 20,
    "😀👨‍👩‍👧‍👦🇨🇳" * 10,
    "<script>alert('x')</script> & \"quotes\"",
    "tab\there\rcarriage\x00null\x1fcontrol",
    "𠀀𠀁𠀂𠀃𠀄𠀅𠀆𠀇𠀈𠀉𠀊𠀋𠀌𠀍𠀎𠀏𠀐𠀑𠀒𠀓𠀔",
    "混合 mixed 文本 text 123 ￥ ！？",
]


@pytest.mark.parametrize("text", NASTY_TEXTS)
def test_output_passes_fake_validation(text):
    mapping = {
        "thing1": "sender_name",
        "thing2": "excerpt",
        "character_string3": "excerpt",
        "time4": "sent_at",
        "date5": "sent_at",
    }

    data = build(mapping, sender=text, excerpt=text)

    for key, item in data.items():
        rule = VALUE_RULES[template_field_kind(key)]
        assert rule(item["value"]), (key, item["value"])
        assert "\n" not in item["value"]
