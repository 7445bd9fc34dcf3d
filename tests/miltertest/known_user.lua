-- A known account is accepted at RCPT and the message goes through.
dofile(common)
local conn = connect("127.0.0.1", "MTKNOWN")
mail_from(conn, SMFIR_CONTINUE, "<sender@x.test>")
rcpt_to(conn, "<alice@abc.example>", SMFIR_CONTINUE)
message(conn, {{"Subject", "hello"}}, "Hello.\r\n")
expect(conn, SMFIR_CONTINUE, "end of message")
if mt.eom_check(conn, MT_RCPTDELETE, "<alice@abc.example>") then
  fail("a qualified recipient was rewritten")
end
passed(conn)
